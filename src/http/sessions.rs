//! Sessions that renew without a reconnect: the live streams a dashboard opened with its
//! session cookie follow the session's expiry, which `POST /api/session` with a fresh token
//! moves on and `DELETE /api/session` (signing out) moves to now.
//!
//! A session is named by a random id in its own cookie (`__Host-storepulse-sid`, set with
//! the token's cookie and kept across renewals). A stream opened with the cookies (not an
//! `Authorization` header) attaches to its session's entry, which holds the grant it was
//! opened under (subject, stores, role) and a watch of the expiry. A renewal moves the
//! expiry only with a token of the same grant: a token for other stores or another role
//! starts a new session (new id) and the old streams end at their old expiry. Entries exist
//! only while streams are attached, so the table is bounded by the open streams. It is this
//! process's: behind a load balancer, a renewal reaches the streams on the edge that took the
//! `POST` (docs/operations.md says how to keep a session's requests on one edge).

use crate::auth::{Principal, Role, Stores};
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// The session id's cookie.
pub const SESSION_ID_COOKIE: &str = "__Host-storepulse-sid";

/// What a session lets its streams read: a renewal must grant the same.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    subject: String,
    stores: Stores,
    role: Role,
}

impl Grant {
    fn of(principal: &Principal) -> Grant {
        Grant {
            subject: principal.subject.clone(),
            stores: principal.stores.clone(),
            role: principal.role,
        }
    }
}

struct Entry {
    grant: Grant,
    /// The session's expiry (Unix ms).
    expiry: watch::Sender<i64>,
    streams: u32,
}

/// The sessions with streams attached.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Entry>>,
}

/// A stream's attachment to its session: the session's expiry as it moves; it detaches
/// when dropped.
pub struct Attached {
    sessions: Arc<Sessions>,
    id: String,
    /// The session's expiry (Unix ms): renewals move it on, signing out to 0.
    pub expiry: watch::Receiver<i64>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut table = self.sessions.table();
        if let Some(entry) = table.get_mut(&self.id) {
            entry.streams -= 1;
            if entry.streams == 0 {
                table.remove(&self.id);
            }
        }
    }
}

/// What a renewal did.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The session's streams continue to the new expiry; the id stays.
    Renewed,
    /// No stream is attached to this id: the id stays, later streams attach with this grant.
    Kept,
    /// The token grants something else: a new session, with a new id.
    New,
}

impl Sessions {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attaches a stream opened by `principal` with the cookie of session `id`; `None` when
    /// the session's streams hold another grant (the stream then ends at its own token's
    /// expiry) or the principal does not expire.
    pub fn attach(self: &Arc<Self>, id: &str, principal: &Principal) -> Option<Attached> {
        let expires_at_ms = principal.expires_at_ms?;
        let grant = Grant::of(principal);
        let mut table = self.table();
        let entry = table.entry(id.to_owned()).or_insert_with(|| Entry {
            grant: grant.clone(),
            expiry: watch::Sender::new(expires_at_ms),
            streams: 0,
        });
        if entry.grant != grant {
            return None;
        }
        // A stream opened with a newer cookie than the session's last renewal here.
        entry.expiry.send_if_modified(|at| {
            let later = expires_at_ms > *at;
            *at = (*at).max(expires_at_ms);
            later
        });
        entry.streams += 1;
        Some(Attached {
            sessions: Arc::clone(self),
            id: id.to_owned(),
            expiry: entry.expiry.subscribe(),
        })
    }

    /// `POST /api/session` with a verified token, for the session named `id`.
    pub fn renew(&self, id: &str, principal: &Principal) -> Renewal {
        let table = self.table();
        let Some(entry) = table.get(id) else {
            return Renewal::Kept;
        };
        if entry.grant != Grant::of(principal) {
            return Renewal::New;
        }
        if let Some(at) = principal.expires_at_ms {
            entry.expiry.send_if_modified(|old| {
                let later = at > *old;
                *old = (*old).max(at);
                later
            });
        }
        Renewal::Renewed
    }

    /// `DELETE /api/session`: the session's streams end now (`session-expired`).
    pub fn revoke(&self, id: &str) {
        if let Some(entry) = self.table().get(id) {
            entry.expiry.send_replace(0);
        }
    }
}

/// A new session id: 128 random bits, hex.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The session id the request's cookies carry, if it looks like one of ours.
pub fn id_of(headers: &HeaderMap) -> Option<&str> {
    super::access::cookie(headers, SESSION_ID_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn principal(stores: &[&str], role: Role, expires_at_ms: i64) -> Principal {
        Principal {
            subject: "ops".into(),
            stores: Stores::Only(
                stores
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect::<BTreeSet<_>>(),
            ),
            role,
            expires_at_ms: Some(expires_at_ms),
        }
    }

    #[test]
    fn a_renewal_of_the_same_grant_moves_the_streams_expiry_and_another_grant_does_not() {
        let sessions = Arc::new(Sessions::default());
        let berlin = principal(&["berlin"], Role::Viewer, 1_000);
        let stream = sessions.attach("a", &berlin).expect("attached");
        assert_eq!(*stream.expiry.borrow(), 1_000);
        assert_eq!(
            sessions.renew("a", &principal(&["berlin"], Role::Viewer, 5_000)),
            Renewal::Renewed
        );
        assert_eq!(*stream.expiry.borrow(), 5_000);
        // An older token does not shorten it.
        sessions.renew("a", &principal(&["berlin"], Role::Viewer, 2_000));
        assert_eq!(*stream.expiry.borrow(), 5_000);
        // Other stores, or another role: a new session; these streams keep their expiry.
        for other in [
            principal(&["berlin", "nyc"], Role::Viewer, 9_000),
            principal(&["berlin"], Role::Analyst, 9_000),
        ] {
            assert_eq!(sessions.renew("a", &other), Renewal::New);
            assert!(sessions.attach("a", &other).is_none());
        }
        assert_eq!(*stream.expiry.borrow(), 5_000);
        assert_eq!(
            sessions.renew("b", &berlin),
            Renewal::Kept,
            "no streams on b"
        );
    }

    #[test]
    fn signing_out_ends_the_sessions_streams_and_entries_go_with_their_streams() {
        let sessions = Arc::new(Sessions::default());
        let berlin = principal(&["berlin"], Role::Viewer, 1_000);
        let first = sessions.attach("a", &berlin).expect("attached");
        let second = sessions
            .attach("a", &principal(&["berlin"], Role::Viewer, 3_000))
            .expect("attached");
        assert_eq!(*first.expiry.borrow(), 3_000, "the newer cookie's expiry");
        sessions.revoke("a");
        assert_eq!((*first.expiry.borrow(), *second.expiry.borrow()), (0, 0));
        drop((first, second));
        assert!(sessions.table().is_empty());
        let anonymous = Principal::anonymous();
        assert!(
            sessions.attach("a", &anonymous).is_none(),
            "no expiry, nothing to follow"
        );
    }

    #[test]
    fn only_well_formed_ids_are_read_from_cookies() {
        let mut headers = HeaderMap::new();
        let id = new_id();
        headers.insert(
            axum::http::header::COOKIE,
            format!("x=1; {SESSION_ID_COOKIE}={id}")
                .parse()
                .expect("header"),
        );
        assert_eq!(id_of(&headers), Some(id.as_str()));
        headers.insert(
            axum::http::header::COOKIE,
            format!("{SESSION_ID_COOKIE}=../../etc")
                .parse()
                .expect("header"),
        );
        assert_eq!(id_of(&headers), None);
    }
}
