//! A Confluent-compatible schema registry's HTTP API (Confluent's, or Apicurio's
//! `/apis/ccompat/v7`): fetching a writer schema by id (for `serve`, through
//! `ingest::schemas`), and registering storepulse's schemas under the topic-name subjects
//! (`storepulse schemas register`, `storepulse simulate --schema-registry`).
//!
//! Subjects: `<topic>-value`. The inventory and activity topics carry one event type each,
//! registered as that record; the orders topic carries two, registered as a union of
//! `OrderPlaced` and `OrderCancelled` (a producer writes the union's branch index before
//! the record, as Confluent's serializers do for a union schema). Each subject is set to
//! `BACKWARD` compatibility first, so the registry refuses a new version storepulse's
//! readers could not read.

use crate::config::SchemaRegistrySection;
use crate::events::{Codec, EncodeError, Event, EventKind};
use crate::kafka::Topics;
use secrecy::ExposeSecret;

/// What the registry said of an id.
#[derive(Debug)]
pub enum Answer {
    /// The schema's text (Avro JSON).
    Schema(String),
    /// It has no schema of that id.
    NotFound,
    /// A schema that is not Avro (`schemaType`).
    NotAvro(String),
}

/// Why a fetch failed: tried again.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// The registry's HTTP API: `GET <url>/schemas/ids/<id>`.
pub struct RegistryClient {
    base: String,
    http: reqwest::blocking::Client,
    basic: Option<(String, String)>,
    bearer: Option<String>,
}

impl RegistryClient {
    /// A client of `settings.url` (which must not be empty).
    pub fn new(settings: &SchemaRegistrySection) -> anyhow::Result<RegistryClient> {
        let http = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()?;
        let token = settings.token.expose_secret();
        Ok(RegistryClient {
            base: settings.url.trim_end_matches('/').to_owned(),
            http,
            basic: (!settings.username.is_empty()).then(|| {
                (
                    settings.username.clone(),
                    settings.password.expose_secret().to_owned(),
                )
            }),
            bearer: (!token.is_empty()).then(|| token.to_owned()),
        })
    }

    fn request(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        let request = request.header(
            "accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        match (&self.basic, &self.bearer) {
            (_, Some(token)) => request.bearer_auth(token),
            (Some((user, password)), None) => request.basic_auth(user, Some(password)),
            (None, None) => request,
        }
    }

    /// The schema of registry id `id`.
    pub fn fetch(&self, id: u32) -> Result<Answer, Unavailable> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let response = self
            .request(self.http.get(&url))
            .send()
            .map_err(|e| Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Answer::NotFound);
        }
        if !status.is_success() {
            return Err(Unavailable(format!("GET {url}: {status}")));
        }
        let body: serde_json::Value = response
            .json()
            .map_err(|e| Unavailable(format!("GET {url}: not JSON: {e}")))?;
        let kind = body["schemaType"].as_str().unwrap_or("AVRO");
        if kind != "AVRO" {
            return Ok(Answer::NotAvro(kind.to_owned()));
        }
        body["schema"]
            .as_str()
            .map(|s| Answer::Schema(s.to_owned()))
            .ok_or_else(|| Unavailable(format!("GET {url}: no \"schema\" in {body}")))
    }

    /// Registers `schema` under `subject` (`POST <url>/subjects/<subject>/versions`): its id
    /// (the same id for the same schema), or the registry's refusal.
    pub fn register(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let response = self
            .request(self.http.post(&url))
            .json(&serde_json::json!({ "schema": schema, "schemaType": "AVRO" }))
            .send()?;
        let status = response.status();
        let body: serde_json::Value = response.json().unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("POST {url}: {status}: {body}");
        }
        body["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| anyhow::anyhow!("POST {url}: no id in {body}"))
    }

    /// Sets `subject`'s compatibility rule (`PUT <url>/config/<subject>`).
    pub fn set_compatibility(&self, subject: &str, level: &str) -> anyhow::Result<()> {
        let url = format!("{}/config/{subject}", self.base);
        let response = self
            .request(self.http.put(&url))
            .json(&serde_json::json!({ "compatibility": level }))
            .send()?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "PUT {url}: {status}: {}",
                response.text().unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// How a producer frames each kind under the registry's ids: the subject's id, and the
/// union branch when the subject is a union.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framing {
    ids: Vec<(EventKind, u32, Option<usize>)>,
    /// Bytes written after an `OrderPlaced` record: the fields the evolved version added.
    trailer: Vec<u8>,
}

impl Framing {
    /// The id (and branch) records of `kind` are written under.
    pub fn id_of(&self, kind: EventKind) -> Option<(u32, Option<usize>)> {
        self.ids
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|&(_, id, branch)| (id, branch))
    }

    /// `event` in the Confluent framing under its kind's id.
    pub fn encode(&self, codec: &Codec, event: &Event) -> Result<Vec<u8>, EncodeError> {
        let kind = event.kind();
        let (id, branch) = self.id_of(kind).unwrap_or((0, None));
        let mut bytes = match branch {
            Some(branch) => codec.encode_confluent_union(id, branch, event)?,
            None => codec.encode_confluent(id, event)?,
        };
        if kind == EventKind::OrderPlaced {
            bytes.extend_from_slice(&self.trailer);
        }
        Ok(bytes)
    }
}

/// The subjects storepulse's schemas are registered under: `(subject, schema text, the
/// kinds it carries in branch order; a union when there are several)`.
pub fn subjects(topics: &Topics, evolved: bool) -> Vec<(String, String, Vec<EventKind>)> {
    let text = |kind: EventKind| -> String {
        let text = crate::events::codec::current_text(kind);
        if evolved && kind == EventKind::OrderPlaced {
            evolve_order_placed(text)
        } else {
            text.to_owned()
        }
    };
    vec![
        (
            format!("{}-value", topics.orders),
            format!(
                "[{}, {}]",
                text(EventKind::OrderPlaced),
                text(EventKind::OrderCancelled)
            ),
            vec![EventKind::OrderPlaced, EventKind::OrderCancelled],
        ),
        (
            format!("{}-value", topics.inventory),
            text(EventKind::StockChanged),
            vec![EventKind::StockChanged],
        ),
        (
            format!("{}-value", topics.activity),
            text(EventKind::SessionSeen),
            vec![EventKind::SessionSeen],
        ),
    ]
}

/// `OrderPlaced` as a producer's next version might have it: a field added last, with a
/// default (`coupon_code`, a nullable string), which BACKWARD compatibility allows.
fn evolve_order_placed(text: &str) -> String {
    let mut json: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if let Some(fields) = json["fields"].as_array_mut() {
        fields.push(serde_json::json!({
            "name": "coupon_code",
            "type": ["null", "string"],
            "default": null,
            "doc": "Added by a producer's later version (storepulse simulate --evolve-schema-at)."
        }));
    }
    json.to_string()
}

/// The bytes of `coupon_code = "FLASH10"` (union branch 1: a string).
const COUPON: &[u8] = b"\x02\x0eFLASH10";

/// Registers storepulse's schemas (evolved: with `OrderPlaced`'s added field) under the
/// topic-name subjects with `BACKWARD` compatibility, and says how to frame records under
/// the ids the registry gave. Registering the same schema again gives the same ids.
pub fn register(
    client: &RegistryClient,
    topics: &Topics,
    evolved: bool,
) -> anyhow::Result<(Framing, Vec<(String, u32)>)> {
    let mut ids = Vec::new();
    let mut registered = Vec::new();
    for (subject, schema, kinds) in subjects(topics, evolved) {
        client.set_compatibility(&subject, "BACKWARD")?;
        let id = client.register(&subject, &schema)?;
        let union = kinds.len() > 1;
        for (branch, kind) in kinds.into_iter().enumerate() {
            ids.push((kind, id, union.then_some(branch)));
        }
        registered.push((subject, id));
    }
    let trailer = if evolved { COUPON.to_vec() } else { Vec::new() };
    Ok((Framing { ids, trailer }, registered))
}

/// A client of `settings` with its URL replaced by `url` when given.
pub fn client(
    settings: &SchemaRegistrySection,
    url: Option<&str>,
) -> anyhow::Result<RegistryClient> {
    let mut settings = settings.clone();
    if let Some(url) = url {
        settings.url = url.to_owned();
    }
    anyhow::ensure!(
        !settings.url.is_empty(),
        "no schema registry: give --schema-registry URL or set schema_registry.url (STOREPULSE_SCHEMA_REGISTRY_URL)"
    );
    RegistryClient::new(&settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RegisteredSchema;

    #[test]
    fn the_registered_subjects_resolve_and_evolved_orders_decode_with_their_trailer() {
        let topics = crate::kafka::KafkaSettings::default().topics;
        let mut codec = Codec::new(&Default::default()).expect("schemas");
        for (evolved, first_id) in [(false, 1), (true, 10)] {
            let mut ids = Vec::new();
            for (n, (subject, schema, kinds)) in subjects(&topics, evolved).into_iter().enumerate()
            {
                assert!(subject.ends_with("-value"), "{subject}");
                let id = first_id + n as u32;
                let resolved = RegisteredSchema::resolve(&schema).expect("ours resolve");
                assert_eq!(resolved.kinds(), kinds);
                codec.learn(id, Ok(resolved));
                let union = kinds.len() > 1;
                for (branch, kind) in kinds.into_iter().enumerate() {
                    ids.push((kind, id, union.then_some(branch)));
                }
            }
            let framing = Framing {
                ids,
                trailer: if evolved { COUPON.to_vec() } else { Vec::new() },
            };
            for event in crate::events::samples::all() {
                let bytes = framing.encode(&codec, &event).expect("encodes");
                assert_eq!(codec.decode(&bytes), Ok(event), "evolved: {evolved}");
            }
        }
    }
}
