//! The tests' SSE client: a plain HTTP/1.0 client of `/api/stream` and the check every
//! client's log passes (ids only move forward, deltas apply onto the snapshot). Shared by
//! the integration tests and the cluster fault drill.

use crate::helpers::position_total;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};
use storepulse::live::client::{SseEvent, SseParser, apply_delta};

/// One server-sent event (the shared test client's type).
pub type Sse = SseEvent;

/// A plain SSE client over HTTP/1.0 (the body is the raw stream until close), parsing with
/// the shared test client (`storepulse::live::client`).
pub struct SseClient {
    reader: BufReader<std::net::TcpStream>,
    parser: SseParser,
    queued: std::collections::VecDeque<Sse>,
}

impl SseClient {
    pub fn connect(address: &str, path: &str, last_event_id: Option<&[u8]>) -> SseClient {
        SseClient::connect_with(address, path, last_event_id, None)
    }

    /// Connects with a fixed `SO_RCVBUF` (a client whose kernel buffers little).
    pub fn connect_with(
        address: &str,
        path: &str,
        last_event_id: Option<&[u8]>,
        receive_buffer: Option<usize>,
    ) -> SseClient {
        // A process that is still assigning its partitions answers 503: try again.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match SseClient::try_connect(address, path, last_event_id, receive_buffer) {
                Some(client) => return client,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                None => panic!("{path} never answered 200"),
            }
        }
    }

    fn try_connect(
        address: &str,
        path: &str,
        last_event_id: Option<&[u8]>,
        receive_buffer: Option<usize>,
    ) -> Option<SseClient> {
        let target: std::net::SocketAddr = address.parse().expect("an ip:port address");
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(target),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        socket.connect(&target.into()).expect("connects");
        let mut stream: std::net::TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n").into_bytes();
        if let Some(id) = last_event_id {
            request.extend_from_slice(b"Last-Event-ID: ");
            request.extend_from_slice(id);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        stream.write_all(&request).expect("request written");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        // A connection closed before any answer is a network error: an EventSource
        // connects again, and so does this client. A 503 (starting, or no server behind a
        // balancer) is worth another try; any other status is not.
        if reader.read_line(&mut status).is_err() || status.is_empty() || status.contains(" 503 ") {
            return None;
        }
        assert!(status.contains(" 200 "), "stream answered {status:?}");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).expect("header");
            if header == "\r\n" || header.is_empty() {
                break;
            }
        }
        Some(SseClient {
            reader,
            parser: SseParser::new(),
            queued: Default::default(),
        })
    }

    /// The next event with data (comments and `retry:` are skipped).
    pub fn next(&mut self) -> Sse {
        self.try_next().expect("stream ended")
    }

    /// The next event with data, or `None` when the server closed the stream.
    pub fn try_next(&mut self) -> Option<Sse> {
        use std::io::Read;
        let mut chunk = [0u8; 16 * 1024];
        while self.queued.is_empty() {
            let read = match self.reader.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("stream read: {e}"),
            };
            let queued = &mut self.queued;
            self.parser
                .push(&chunk[..read], |e| queued.push_back(e.to_owned()));
        }
        self.queued.pop_front()
    }
}

/// Applies a client's `events` onto `view` (a snapshot or resync replaces it, a delta
/// applies to it) and checks that ids only move forward.
pub fn check_and_apply(view: &mut Option<Value>, events: &[Sse]) {
    let mut last: Option<i64> = view.as_ref().map(position_total);
    for event in events {
        let data: Value = serde_json::from_str(&event.data).expect("json data");
        match event.event.as_str() {
            "snapshot" | "resync" => *view = Some(data),
            "delta" => apply_delta(view.as_mut().expect("a delta follows a snapshot"), &data),
            "progress" => continue,
            other => panic!("unexpected event {other}"),
        }
        let position = position_total(&serde_json::json!({ "position": event.id }));
        if let Some(last) = last {
            assert!(
                position > last || event.event != "delta",
                "ids only move forward"
            );
        }
        last = Some(position);
    }
}

/// A dashboard that reconnects: reads `path` from `address_of(0)`; each time its stream
/// ends (its server died or stopped) it connects to `address_of(n)` for the n-th time with
/// its last id, as an EventSource does (behind a load balancer, or moving along a list of
/// servers). Once `target` is set it reads until an event covers it (all stores), or until
/// no data came for 2 s (one store: its last frame may be older). Returns its events and,
/// per resume, the first event after it.
pub fn follow_resuming(
    address_of: impl Fn(usize) -> String,
    path: &str,
    target: &std::sync::atomic::AtomicI64,
    limit: Duration,
) -> (Vec<Sse>, Vec<Sse>) {
    use std::sync::atomic::Ordering;
    let deadline = Instant::now() + limit;
    let mut events: Vec<Sse> = Vec::new();
    let mut resumed_with = Vec::new();
    let mut connections = 0;
    let mut connection = SseClient::connect(&address_of(connections), path, None);
    let scoped = path.contains("store=");
    let mut last_data = Instant::now();
    let mut reached = 0;
    let mut resuming = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "a dashboard of {path} never reached {}: {} events, the last {:?}, resumed with {:?}",
            target.load(Ordering::SeqCst),
            events.len(),
            events.last().map(|e| (&e.event, &e.id)),
            resumed_with
                .iter()
                .map(|e: &Sse| (&e.event, &e.id))
                .collect::<Vec<_>>()
        );
        match connection.try_next() {
            Some(event) => {
                let target = target.load(Ordering::SeqCst);
                if event.event != "progress" {
                    last_data = Instant::now();
                    if let Some(id) = &event.id {
                        reached =
                            reached.max(position_total(&serde_json::json!({ "position": id })));
                    }
                    if std::mem::take(&mut resuming) {
                        resumed_with.push(event.clone());
                    }
                }
                let quiet =
                    scoped && target < i64::MAX && last_data.elapsed() > Duration::from_secs(2);
                events.push(event);
                if reached >= target || quiet {
                    return (events, resumed_with);
                }
            }
            None => {
                let last = events.iter().rev().find_map(|e| e.id.clone());
                connections += 1;
                connection = SseClient::connect(
                    &address_of(connections),
                    path,
                    last.as_deref().map(str::as_bytes),
                );
                resuming = true;
            }
        }
    }
}
