//! Who may read what: bearer tokens (JWT) and the scope they grant. The only jsonwebtoken
//! code; the HTTP side (where a token is read from, what each endpoint needs) is
//! `http/access.rs`.
//!
//! A token is a JWT signed with HS256 (`auth.hs256_secret`), or RS256/ES256 (a PEM public
//! key in `auth.public_key_file`, or the keys of a JWKS file in `auth.jwks_file`, chosen by
//! `kid`). Claims: `exp` (required; no leeway), `stores` (`"*"`: every store and the
//! rollup, or a list of store ids), `role` (`viewer` < `analyst` < `operator`, each
//! allowing what the one before does), optional `sub`, and `iss` / `aud` when configured.
//! Key files are read at start and again on [`Verifier::reload`] (SIGHUP); a reload that
//! fails keeps the keys in use.

use crate::config::AuthSection;
use crate::events::StoreId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// What a token allows, in order: each role allows what the ones before it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Snapshots and live streams of its stores.
    Viewer,
    /// Also replays of its stores.
    Analyst,
    /// Also `/metrics` when `auth.protect_metrics` is on.
    Operator,
}

impl Role {
    /// The claim's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Operator => "operator",
        }
    }
}

/// The stores a token may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stores {
    /// Every store, and the all-stores rollup.
    All,
    /// These stores only (never the rollup).
    Only(BTreeSet<String>),
}

/// `stores` as it is written in a token: `"*"` or a list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum StoresClaim {
    One(String),
    Many(Vec<String>),
}

/// The claims we read and write.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claims {
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    stores: StoresClaim,
    role: Role,
}

/// Who is asking, once the token is verified (or anyone, with `auth.mode = "none"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub` (`token:<hash>` when absent; `anonymous` without auth).
    pub subject: String,
    /// What it may read.
    pub stores: Stores,
    /// Its role.
    pub role: Role,
    /// When the token expires (Unix ms); `None` without auth.
    pub expires_at_ms: Option<i64>,
}

/// Whether a principal may read one store, or every store and the rollup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Yes.
    Allowed,
    /// A store outside its scope: answered exactly as a store with no events.
    NotInScope,
    /// All stores, asked by a token for some stores only.
    NeedsStore,
}

impl Principal {
    /// How long its token has left (`None`: it does not expire; zero once it has).
    pub fn session_left(&self) -> Option<std::time::Duration> {
        self.expires_at_ms.map(|at_ms| {
            let left = at_ms.saturating_sub(crate::wall_clock::unix_ms());
            std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0))
        })
    }

    /// Anyone, when access control is off: every store, every role, no expiry.
    pub fn anonymous() -> Principal {
        Principal {
            subject: "anonymous".into(),
            stores: Stores::All,
            role: Role::Operator,
            expires_at_ms: None,
        }
    }

    /// Whether it may read `store` (`None`: every store and the rollup).
    pub fn access(&self, store: Option<&StoreId>) -> Access {
        match (&self.stores, store) {
            (Stores::All, _) => Access::Allowed,
            (Stores::Only(_), None) => Access::NeedsStore,
            (Stores::Only(stores), Some(store)) if stores.contains(&store.0) => Access::Allowed,
            (Stores::Only(_), Some(_)) => Access::NotInScope,
        }
    }

    /// Its stores as JSON: `"*"` or the list.
    pub fn stores_json(&self) -> serde_json::Value {
        match &self.stores {
            Stores::All => serde_json::Value::from("*"),
            Stores::Only(stores) => stores.iter().cloned().collect(),
        }
    }
}

/// Why a request's token was not accepted. The messages are safe to answer with: they
/// never contain the token.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token at all.
    #[error(
        "a bearer token is required (Authorization: Bearer <token>, or the session cookie of POST /api/session)"
    )]
    Missing,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Anything else: bad signature, unknown key, wrong algorithm, missing claims.
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// A key file that cannot be used, at start or on reload.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Unreadable.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// Not a key we can use.
    #[error("{path}: {message}")]
    Unusable {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// A verification key and the one algorithm it is used with.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys in use: the HS256 secret, then the PEM key, then the JWKS keys.
#[derive(Default)]
struct Keys(Vec<Key>);

/// Verifies tokens against the configured keys.
pub struct Verifier {
    settings: AuthSection,
    keys: RwLock<Arc<Keys>>,
}

impl Verifier {
    /// The verifier of `settings`, with its key files read; `None` when `auth.mode` is
    /// `none`.
    pub fn new(settings: &AuthSection) -> Result<Option<Verifier>, KeyError> {
        if settings.mode != "jwt" {
            return Ok(None);
        }
        let keys = load_keys(settings)?;
        Ok(Some(Verifier {
            settings: settings.clone(),
            keys: RwLock::new(Arc::new(keys)),
        }))
    }

    /// Reads the key files again (SIGHUP); on an error the keys in use stay. Returns how
    /// many keys are in use.
    pub fn reload(&self) -> Result<usize, KeyError> {
        let keys = load_keys(&self.settings)?;
        let count = keys.0.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(count)
    }

    /// The principal of a token, if it verifies (signature, `exp` against the system clock
    /// with no leeway, `iss` / `aud` when configured, the claims' shapes).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a JWT".into()))?;
        let keys = Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let candidates: Vec<&Key> = keys
            .0
            .iter()
            .filter(|key| key.algorithm == header.alg)
            .filter(|key| match (&header.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!(
                "no key for algorithm {:?}{}",
                header.alg,
                header
                    .kid
                    .as_deref()
                    .map(|kid| format!(" and kid {kid:?}"))
                    .unwrap_or_default()
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        if self.settings.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&self.settings.issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.settings.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&self.settings.audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut last = AuthError::Invalid("the signature does not verify".into());
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return principal(data.claims, token),
                Err(error) => {
                    last = match error.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => {
                            return Err(AuthError::Invalid(
                                "the token is not valid yet (nbf)".into(),
                            ));
                        }
                        ErrorKind::InvalidSignature => {
                            AuthError::Invalid("the signature does not verify".into())
                        }
                        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                        ErrorKind::MissingRequiredClaim(claim) => {
                            AuthError::Invalid(format!("claim {claim} is required"))
                        }
                        ErrorKind::Json(_) => AuthError::Invalid(
                            "claims exp (number), stores (\"*\" or a list) and role (viewer, analyst or operator) are required".into(),
                        ),
                        _ => AuthError::Invalid("the signature does not verify".into()),
                    };
                }
            }
        }
        Err(last)
    }
}

/// The principal of verified claims. A token without `sub` is a subject of its own:
/// `token:` and the first 16 hex digits of its SHA-256, so per-subject limits count it.
fn principal(claims: Claims, token: &str) -> Result<Principal, AuthError> {
    let stores = match claims.stores {
        StoresClaim::One(all) if all == "*" => Stores::All,
        StoresClaim::One(store) => Stores::Only(BTreeSet::from([store])),
        StoresClaim::Many(stores) if stores.iter().any(|s| s == "*") => Stores::All,
        StoresClaim::Many(stores) => Stores::Only(stores.into_iter().collect()),
    };
    Ok(Principal {
        subject: claims.sub.filter(|sub| !sub.is_empty()).unwrap_or_else(|| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(token.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("token:{hex}")
        }),
        stores,
        role: claims.role,
        expires_at_ms: Some(claims.exp.saturating_mul(1000)),
    })
}

fn read(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|cause| KeyError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn load_keys(settings: &AuthSection) -> Result<Keys, KeyError> {
    let mut keys = Vec::new();
    let secret = settings.hs256_secret.expose_secret();
    if !secret.is_empty() {
        keys.push(Key {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.as_bytes()),
        });
    }
    if !settings.public_key_file.is_empty() {
        let path = &settings.public_key_file;
        let pem = read(path)?;
        let (algorithm, key) = DecodingKey::from_rsa_pem(&pem)
            .map(|key| (Algorithm::RS256, key))
            .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|key| (Algorithm::ES256, key)))
            .map_err(|_| KeyError::Unusable {
                path: path.clone(),
                message: "not a PEM RSA or EC (P-256) public key".into(),
            })?;
        keys.push(Key {
            kid: None,
            algorithm,
            key,
        });
    }
    if !settings.jwks_file.is_empty() {
        let path = &settings.jwks_file;
        let unusable = |message: String| KeyError::Unusable {
            path: path.clone(),
            message,
        };
        let set: JwkSet = serde_json::from_slice(&read(path)?)
            .map_err(|e| unusable(format!("not a JWKS document: {e}")))?;
        for jwk in &set.keys {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
                (Some(alg), _) => {
                    return Err(unusable(format!(
                        "alg {alg:?}: a JWKS key must be RS256 or ES256"
                    )));
                }
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
                (None, _) => {
                    return Err(unusable("a key without alg that is not RSA or EC".into()));
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| unusable(e.to_string()))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
    }
    Ok(Keys(keys))
}

/// What a new token grants (`storepulse token`, and tests).
#[derive(Clone, Debug)]
pub struct Grant {
    /// `sub`.
    pub subject: String,
    /// `stores`: `None` for `"*"`.
    pub stores: Option<Vec<String>>,
    /// `role`.
    pub role: Role,
    /// `exp`, Unix seconds.
    pub expires_at_s: i64,
}

/// A token for `grant` signed with HS256 and `secret`.
pub fn sign_hs256(secret: &SecretString, grant: &Grant) -> Result<String, String> {
    sign(
        &Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        grant,
    )
}

/// A token for `grant` with any header and key (tests sign RS256/ES256 and bad tokens).
pub fn sign(header: &Header, key: &EncodingKey, grant: &Grant) -> Result<String, String> {
    let claims = Claims {
        exp: grant.expires_at_s,
        sub: Some(grant.subject.clone()).filter(|s| !s.is_empty()),
        stores: match &grant.stores {
            None => StoresClaim::One("*".into()),
            Some(stores) => StoresClaim::Many(stores.clone()),
        },
        role: grant.role,
    };
    jsonwebtoken::encode(header, &claims, key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

    fn settings() -> AuthSection {
        let mut settings = crate::config::defaults().auth.clone();
        settings.mode = "jwt".into();
        settings.hs256_secret = SecretString::from(SECRET);
        settings
    }

    fn now_s() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64
    }

    fn grant(stores: Option<&[&str]>, role: Role, ttl_s: i64) -> Grant {
        Grant {
            subject: "ana".into(),
            stores: stores.map(|s| s.iter().map(|s| (*s).to_owned()).collect()),
            role,
            expires_at_s: now_s() + ttl_s,
        }
    }

    fn token(grant: &Grant) -> String {
        sign_hs256(&SecretString::from(SECRET), grant).expect("signs")
    }

    #[test]
    fn a_token_without_sub_is_a_subject_of_its_own_and_nbf_is_honoured() {
        let verifier = Verifier::new(&settings()).expect("keys").expect("jwt");
        let mut anonymous = grant(Some(&["store-berlin"]), Role::Viewer, 60);
        anonymous.subject = String::new();
        let one = verifier.verify(&token(&anonymous)).expect("verifies");
        anonymous.expires_at_s += 1;
        let other = verifier.verify(&token(&anonymous)).expect("verifies");
        assert!(one.subject.starts_with("token:"), "{}", one.subject);
        assert_eq!(one.subject.len(), "token:".len() + 16);
        assert_ne!(one.subject, other.subject, "each token counts on its own");
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let claims = |nbf: i64| serde_json::json!({"exp": now_s() + 60, "nbf": nbf, "sub": "ana", "stores": "*", "role": "viewer"});
        let early =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(now_s() + 600), &key)
                .expect("signs");
        assert_eq!(
            verifier.verify(&early),
            Err(AuthError::Invalid(
                "the token is not valid yet (nbf)".into()
            ))
        );
        let ready =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(now_s() - 5), &key)
                .expect("signs");
        assert_eq!(
            verifier.verify(&ready).map(|p| p.subject),
            Ok("ana".to_owned())
        );
    }

    #[test]
    fn a_good_token_gives_its_stores_role_and_expiry() {
        let verifier = Verifier::new(&settings()).expect("keys").expect("jwt");
        let berlin = verifier
            .verify(&token(&grant(Some(&["store-berlin"]), Role::Viewer, 60)))
            .expect("verifies");
        assert_eq!(berlin.subject, "ana");
        assert_eq!(berlin.role, Role::Viewer);
        assert_eq!(berlin.access(Some(&"store-berlin".into())), Access::Allowed);
        assert_eq!(
            berlin.access(Some(&"store-paris".into())),
            Access::NotInScope
        );
        assert_eq!(berlin.access(None), Access::NeedsStore);
        assert!(berlin.expires_at_ms.is_some_and(|ms| ms > now_s() * 1000));
        let all = verifier
            .verify(&token(&grant(None, Role::Analyst, 60)))
            .expect("verifies");
        assert_eq!(all.access(None), Access::Allowed);
        assert!(all.role >= Role::Viewer && all.role < Role::Operator);
    }

    #[test]
    fn expired_forged_unsigned_and_malformed_tokens_are_refused() {
        let verifier = Verifier::new(&settings()).expect("keys").expect("jwt");
        assert_eq!(
            verifier.verify(&token(&grant(None, Role::Viewer, -1))),
            Err(AuthError::Expired)
        );
        let forged = sign_hs256(
            &SecretString::from("another-secret-that-is-32-bytes-long!!"),
            &grant(None, Role::Viewer, 60),
        )
        .expect("signs");
        assert!(matches!(
            verifier.verify(&forged),
            Err(AuthError::Invalid(_))
        ));
        // alg none: a header claiming no signature, and the HS256 token's claims.
        let good = token(&grant(None, Role::Operator, 60));
        let claims = good.split('.').nth(1).expect("claims");
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert!(matches!(
            verifier.verify(&unsigned),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            verifier.verify("not.a.jwt"),
            Err(AuthError::Invalid(_))
        ));
        // A role we do not know is a claim error, not a default.
        let header = Header::new(Algorithm::HS256);
        let odd = jsonwebtoken::encode(
            &header,
            &serde_json::json!({ "exp": now_s() + 60, "stores": "*", "role": "admin" }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        assert!(matches!(verifier.verify(&odd), Err(AuthError::Invalid(_))));
        // exp is required.
        let no_exp = jsonwebtoken::encode(
            &header,
            &serde_json::json!({ "stores": "*", "role": "viewer" }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        assert!(matches!(
            verifier.verify(&no_exp),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut configured = settings();
        configured.issuer = "https://idp.example".into();
        let verifier = Verifier::new(&configured).expect("keys").expect("jwt");
        assert!(matches!(
            verifier.verify(&token(&grant(None, Role::Viewer, 60))),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn rs256_and_es256_keys_verify_from_pem_and_jwks_and_reload() {
        let dir = std::env::temp_dir().join(format!("storepulse-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
        let rsa_private = std::fs::read(format!("{fixtures}/rsa-private.pem")).expect("fixture");
        let ec_private = std::fs::read(format!("{fixtures}/ec-private.pem")).expect("fixture");
        let rsa = EncodingKey::from_rsa_pem(&rsa_private).expect("rsa key");
        let ec = EncodingKey::from_ec_pem(&ec_private).expect("ec key");
        let mut rsa_jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).expect("jwk");
        rsa_jwk.common.key_id = Some("rsa-1".into());
        let jwks = dir.join("jwks.json");
        std::fs::write(
            &jwks,
            serde_json::to_vec(&JwkSet {
                keys: vec![rsa_jwk],
            })
            .expect("json"),
        )
        .expect("write");
        let mut configured = settings();
        configured.hs256_secret = SecretString::from("");
        configured.public_key_file = format!("{fixtures}/ec-public.pem");
        configured.jwks_file = jwks.display().to_string();
        let verifier = Verifier::new(&configured).expect("keys").expect("jwt");
        let viewer = grant(Some(&["store-berlin"]), Role::Viewer, 60);
        let es = sign(&Header::new(Algorithm::ES256), &ec, &viewer).expect("signs");
        assert!(verifier.verify(&es).is_ok(), "ES256 from the PEM key");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let rs = sign(&header, &rsa, &viewer).expect("signs");
        assert!(verifier.verify(&rs).is_ok(), "RS256 from the JWKS");
        // HS256 is not configured here: an HS256 token is refused whatever its secret.
        assert!(verifier.verify(&token(&viewer)).is_err());
        // The key is rotated out of the JWKS: after a reload its tokens are refused; a
        // broken file on reload keeps the keys in use.
        std::fs::write(&jwks, br#"{"keys":[]}"#).expect("write");
        assert_eq!(verifier.reload().expect("reloads"), 1);
        assert!(verifier.verify(&rs).is_err());
        std::fs::write(&jwks, b"{ not json").expect("write");
        assert!(verifier.reload().is_err());
        assert!(verifier.verify(&es).is_ok(), "the keys in use stay");
        std::fs::remove_dir_all(&dir).ok();
    }
}
