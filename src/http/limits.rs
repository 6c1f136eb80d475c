//! Limits per client, besides the global stream cap: open streams per client address and
//! per principal (a token's `sub`), and a request rate per client address for the
//! endpoints that cost the engine work (snapshots, stream and replay opens), as a token
//! bucket. A refusal is a `429` with `Retry-After`; nothing here is per frame. Behind a
//! proxy listed in `http.trusted_proxies`, the client is the one `X-Forwarded-For` names.

use super::ApiError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The limits (`[limits]` in the configuration).
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// Most open streams from one client address (0: no limit).
    pub streams_per_client: usize,
    /// Most open streams of one principal (0: no limit).
    pub streams_per_principal: usize,
    /// Sustained snapshot and stream-open requests per second from one address (0: no limit).
    pub requests_per_second: f64,
    /// Requests one address may make at once above the rate.
    pub burst: f64,
    /// Proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    pub trusted_proxies: Vec<IpAddr>,
}

/// Addresses tracked before idle ones are forgotten.
const PRUNE_ABOVE: usize = 4_096;

/// One client address: its open streams and its request bucket.
struct Client {
    streams: usize,
    tokens: f64,
    refreshed: Instant,
}

/// The counts, shared by every handler.
pub struct ClientLimits {
    settings: LimitSettings,
    clients: Mutex<HashMap<IpAddr, Client>>,
    principals: Mutex<HashMap<String, usize>>,
}

/// A refused request: why, and when to come back.
#[derive(Debug)]
pub struct Refusal {
    reason: String,
    retry_after: Duration,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            reason: self.reason,
        }
        .into_response();
        let seconds = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An open stream counted against its address and principal until dropped.
pub struct StreamSlot {
    limits: Arc<ClientLimits>,
    address: IpAddr,
    principal: Option<String>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(client) = lock(&self.limits.clients).get_mut(&self.address) {
            client.streams = client.streams.saturating_sub(1);
        }
        if let Some(principal) = &self.principal {
            let mut principals = lock(&self.limits.principals);
            if let Some(count) = principals.get_mut(principal) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    principals.remove(principal);
                }
            }
        }
    }
}

impl ClientLimits {
    /// The address a request is counted against: the peer's, or — when the peer is a
    /// trusted proxy — the nearest address in `X-Forwarded-For` that is not a trusted proxy
    /// (read from the right: the entries to its left are the client's own say).
    pub fn client_address(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.settings.trusted_proxies.contains(&peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|a| a.trim().parse::<IpAddr>())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.settings.trusted_proxies.contains(a))
            .unwrap_or(peer)
    }

    /// Limits with these settings.
    pub fn new(settings: LimitSettings) -> ClientLimits {
        ClientLimits {
            settings,
            clients: Mutex::new(HashMap::new()),
            principals: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `address`'s bucket, or says when one is free.
    pub fn admit(&self, address: IpAddr, now: Instant) -> Result<(), Refusal> {
        let rate = self.settings.requests_per_second;
        if rate <= 0.0 {
            return Ok(());
        }
        let mut clients = lock(&self.clients);
        let client = self.client(&mut clients, address, now);
        let elapsed = now
            .saturating_duration_since(client.refreshed)
            .as_secs_f64();
        client.tokens = (client.tokens + elapsed * rate).min(self.settings.burst.max(1.0));
        client.refreshed = now;
        if client.tokens >= 1.0 {
            client.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal {
                reason: format!(
                    "too many requests from this address (limits.requests_per_second = {rate}); retry later"
                ),
                retry_after: Duration::from_secs_f64((1.0 - client.tokens) / rate),
            })
        }
    }

    /// Counts a stream against `address` and `principal` (a token's subject), or refuses
    /// it when either is at its cap.
    pub fn open_stream(
        self: &Arc<Self>,
        address: IpAddr,
        principal: Option<&str>,
        now: Instant,
    ) -> Result<StreamSlot, Refusal> {
        let per_client = self.settings.streams_per_client;
        let per_principal = self.settings.streams_per_principal;
        let refuse = |reason: String| Refusal {
            reason,
            retry_after: Duration::from_secs(5),
        };
        let mut clients = lock(&self.clients);
        let client = self.client(&mut clients, address, now);
        if per_client > 0 && client.streams >= per_client {
            return Err(refuse(format!(
                "this address has {per_client} streams open (limits.streams_per_client); close one or retry later"
            )));
        }
        if let Some(principal) = principal {
            let mut principals = lock(&self.principals);
            let count = principals.entry(principal.to_owned()).or_insert(0);
            if per_principal > 0 && *count >= per_principal {
                return Err(refuse(format!(
                    "this token's subject has {per_principal} streams open (limits.streams_per_principal); close one or retry later"
                )));
            }
            *count += 1;
        }
        client.streams += 1;
        Ok(StreamSlot {
            limits: Arc::clone(self),
            address,
            principal: principal.map(str::to_owned),
        })
    }

    /// The entry of `address`, created with a full bucket; idle entries are forgotten when
    /// many are tracked.
    fn client<'a>(
        &self,
        clients: &'a mut HashMap<IpAddr, Client>,
        address: IpAddr,
        now: Instant,
    ) -> &'a mut Client {
        if clients.len() >= PRUNE_ABOVE && !clients.contains_key(&address) {
            let refill = Duration::from_secs_f64(
                self.settings.burst.max(1.0) / self.settings.requests_per_second.max(1e-3),
            );
            clients.retain(|_, c| {
                c.streams > 0 || now.saturating_duration_since(c.refreshed) < refill
            });
        }
        clients.entry(address).or_insert_with(|| Client {
            streams: 0,
            tokens: self.settings.burst.max(1.0),
            refreshed: now,
        })
    }
}

impl LimitSettings {
    /// The per-client limits of `settings` (`[limits]`, `http.trusted_proxies`).
    pub fn of(settings: &crate::config::Settings) -> LimitSettings {
        let limits = &settings.limits;
        LimitSettings {
            streams_per_client: limits.streams_per_client,
            streams_per_principal: limits.streams_per_principal,
            requests_per_second: f64::from(limits.requests_per_second),
            burst: f64::from(limits.burst),
            // Checked by the settings' validation.
            trusted_proxies: settings
                .http
                .trusted_proxies
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(
        streams_per_client: usize,
        streams_per_principal: usize,
        rate: f64,
        burst: f64,
    ) -> Arc<ClientLimits> {
        Arc::new(ClientLimits::new(LimitSettings {
            streams_per_client,
            streams_per_principal,
            requests_per_second: rate,
            burst,
            trusted_proxies: vec![PROXY],
        }))
    }

    const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    #[test]
    fn only_a_trusted_proxy_names_the_client_and_only_from_the_right() {
        let limits = limits(0, 0, 0.0, 0.0);
        let headers = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("x-forwarded-for", value.parse().expect("a header"));
            headers
        };
        // Not a trusted proxy: its header is ignored.
        assert_eq!(limits.client_address(A, &headers("10.0.0.2")), A);
        // The proxy: the nearest untrusted entry, from the right.
        assert_eq!(
            limits.client_address(PROXY, &headers("1.2.3.4, 10.0.0.2")),
            B
        );
        assert_eq!(
            limits.client_address(PROXY, &headers("10.0.0.2, 10.0.0.9")),
            B
        );
        // No header, or one that does not parse: the proxy itself.
        assert_eq!(
            limits.client_address(PROXY, &axum::http::HeaderMap::new()),
            PROXY
        );
        assert_eq!(
            limits.client_address(PROXY, &headers("not-an-address")),
            PROXY
        );
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_burst_is_taken_then_the_rate_and_retry_after_says_when() {
        let limits = limits(0, 0, 2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            limits.admit(A, t0).expect("within the burst");
        }
        let refused = limits.admit(A, t0).expect_err("over the burst");
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        limits
            .admit(B, t0)
            .expect("another address has its own bucket");
        limits
            .admit(A, t0 + Duration::from_millis(500))
            .expect("refilled at 2/s");
        assert!(limits.admit(A, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn streams_are_capped_per_address_and_per_principal_and_freed_when_dropped() {
        let limits = limits(2, 3, 0.0, 0.0);
        let now = Instant::now();
        let a1 = limits.open_stream(A, Some("ana"), now).expect("1");
        let _a2 = limits.open_stream(A, Some("ana"), now).expect("2");
        assert!(
            limits.open_stream(A, None, now).is_err(),
            "the address is at 2"
        );
        let _b1 = limits
            .open_stream(B, Some("ana"), now)
            .expect("ana's third");
        assert!(
            limits.open_stream(B, Some("ana"), now).is_err(),
            "ana is at 3"
        );
        let _b2 = limits
            .open_stream(B, Some("bo"), now)
            .expect("bo is not ana");
        drop(a1);
        let _a3 = limits
            .open_stream(A, Some("ana"), now)
            .expect("a slot was freed");
    }
}
