//! Connection limits of a real `serve`: connections that send nothing, trickle their
//! headers or idle on keep-alive are closed after `http.header_timeout`; a live stream is
//! never timed; the open files limit is raised at start; and when descriptors run out,
//! accepts back off (counted, logged once) and the service answers again as idle
//! connections are closed.

use crate::helpers::{self, Server, database_url, fresh_topics};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection (or `limit` passes); what was read, and
/// whether it was closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return (seen, true),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (seen, true),
            Err(_) => {}
        }
    }
    (seen, false)
}

/// The soft "Max open files" of a process.
fn open_files_soft_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("a soft limit")
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_silent_and_trickling_connections_are_closed_but_streams_are_not() {
    let settings = fresh_topics("limits");
    helpers::create_topics(&settings, 1).await;
    let server = Server::start_wrapped(
        &["prlimit", "--nofile=256:4096", "--"],
        &settings.topics,
        &helpers::unique("limits"),
        &database_url(),
        &[
            ("STOREPULSE_HTTP_HEADER_TIMEOUT", "1s"),
            ("STOREPULSE_HEARTBEAT", "300ms"),
        ],
        std::process::Stdio::inherit(),
    );
    assert_eq!(
        open_files_soft_limit(server.pid()),
        4096,
        "the soft limit is raised to the hard one"
    );
    tokio::task::block_in_place(|| {
        // Sends nothing: closed, unanswered.
        let mut silent = TcpStream::connect(&server.address).expect("connects");
        let (seen, closed) = read_until_closed(&mut silent, Duration::from_secs(10));
        assert!(
            closed && seen.is_empty(),
            "silent connection closed unanswered"
        );
        // Trickles its headers (a byte every 150 ms, 6 s in all): closed before they end.
        let mut trickle = TcpStream::connect(&server.address).expect("connects");
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
            server.address,
            "a".repeat(20)
        );
        let mut cut = false;
        for byte in request.as_bytes() {
            if trickle.write_all(&[*byte]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        let (seen, closed) = read_until_closed(&mut trickle, Duration::from_secs(5));
        assert!(
            (cut || closed) && !String::from_utf8_lossy(&seen).contains("200 OK"),
            "trickled request answered: {}",
            String::from_utf8_lossy(&seen)
        );
        // Keep-alive: answered, then closed when it idles.
        let mut idle = TcpStream::connect(&server.address).expect("connects");
        write!(
            idle,
            "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.address
        )
        .expect("written");
        let (seen, closed) = read_until_closed(&mut idle, Duration::from_secs(10));
        assert!(String::from_utf8_lossy(&seen).contains("200 OK"));
        assert!(closed, "an idle keep-alive connection is closed");
        // A live stream outlives the header timeout many times.
        let mut stream = TcpStream::connect(&server.address).expect("connects");
        write!(
            stream,
            "GET /api/stream HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.address
        )
        .expect("written");
        let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(4));
        let text = String::from_utf8_lossy(&seen);
        assert!(!closed, "the stream is still open after 4 s: {text}");
        assert!(
            text.matches("event: progress").count() >= 5,
            "heartbeats keep coming: {text}"
        );
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_accepts_back_off_and_service_resumes() {
    let settings = fresh_topics("emfile");
    helpers::create_topics(&settings, 1).await;
    let log_path = std::env::temp_dir().join(format!("{}.log", helpers::unique("emfile")));
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = Server::start_wrapped(
        &[],
        &settings.topics,
        &helpers::unique("emfile"),
        &database_url(),
        &[("STOREPULSE_HTTP_HEADER_TIMEOUT", "1s")],
        log.into(),
    );
    helpers::wait_for(|| server.get("/healthz").0 == 200, "serve answers").await;
    // Lower its descriptor limit while it runs, then hold 300 idle connections open.
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), "--nofile=128:128"])
        .status()
        .expect("prlimit runs");
    assert!(status.success());
    tokio::task::block_in_place(|| {
        let held: Vec<TcpStream> = (0..300)
            .map(|_| TcpStream::connect(&server.address).expect("queued by the kernel"))
            .collect();
        let started = Instant::now();
        let (status, _) = server.get("/healthz");
        assert_eq!(status, 200, "answered while 300 idle connections wait");
        let waited = started.elapsed();
        let errors = server.metric("storepulse_accept_errors_total");
        assert!(errors > 0, "accepts failed and were counted");
        drop(held);
        let text = std::fs::read_to_string(&log_path).expect("log");
        let lines = text.matches("accept failed").count();
        assert!(
            (1..=1 + waited.as_secs() as usize / 10).contains(&lines),
            "{errors} failed accepts in {waited:?} logged {lines} times"
        );
    });
    let _ = std::fs::remove_file(&log_path);
}

/// Sends `GET path` on a new connection and returns it with the response head.
fn open(address: &str, path: &str) -> (TcpStream, String) {
    open_with(address, path, "")
}

/// [`open`] with `extra` header lines (each ending in CRLF).
fn open_with(address: &str, path: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(address).expect("connects");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{extra}\r\n"
    )
    .expect("written");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).to_lowercase())
}

/// One address over its stream cap or its request rate gets 429 with Retry-After; a freed
/// slot can be taken again; health and readiness are never limited.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_is_capped_on_streams_and_request_rate_with_retry_after() {
    let settings = fresh_topics("client-limits");
    helpers::create_topics(&settings, 1).await;
    let server = Server::start_with(
        &settings.topics,
        &helpers::unique("client-limits"),
        &database_url(),
        &[
            ("STOREPULSE_LIMIT_STREAMS_PER_CLIENT", "3"),
            ("STOREPULSE_LIMIT_REQUESTS_PER_SECOND", "1"),
            ("STOREPULSE_LIMIT_BURST", "8"),
            ("STOREPULSE_HEARTBEAT", "200ms"),
        ],
    );
    helpers::wait_for(
        || server.get("/readyz").1.contains("\"assigned\":true"),
        "partitions assigned",
    )
    .await;
    tokio::task::block_in_place(|| {
        let mut streams: Vec<TcpStream> = (0..3)
            .map(|i| {
                let (stream, head) = open(&server.address, "/api/stream");
                assert!(head.starts_with("http/1.1 200"), "stream {i}: {head}");
                stream
            })
            .collect();
        let (_, refused) = open(&server.address, "/api/stream");
        assert!(refused.starts_with("http/1.1 429"), "{refused}");
        assert!(refused.contains("retry-after: 5"), "{refused}");
        assert_eq!(helpers::http_get(&server.address, "/healthz").0, 200);
        // A stream closes; once the server notices (its next heartbeat) the slot is free.
        drop(streams.pop());
        std::thread::sleep(Duration::from_millis(800));
        let (again, head) = open(&server.address, "/api/stream");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        streams.push(again);
        // 5 of the burst of 8 are spent: snapshots until the bucket is empty.
        let statuses: Vec<u16> = (0..6)
            .map(|_| helpers::http_get(&server.address, "/api/snapshot").0)
            .collect();
        assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
        assert!(statuses[3..].contains(&429), "{statuses:?}");
        let (_, limited) = open(&server.address, "/api/snapshot");
        assert!(
            limited.starts_with("http/1.1 429") && limited.contains("retry-after: 1"),
            "{limited}"
        );
        assert_eq!(helpers::http_get(&server.address, "/healthz").0, 200);
        assert_ne!(
            helpers::http_get(&server.address, "/readyz").0,
            429,
            "readiness is never limited"
        );
    });
}

/// Behind a trusted proxy the client is the one `X-Forwarded-For` names: two clients behind
/// 127.0.0.1 each get their own stream cap.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_cap() {
    let settings = fresh_topics("proxy-limits");
    helpers::create_topics(&settings, 1).await;
    let server = Server::start_with(
        &settings.topics,
        &helpers::unique("proxy-limits"),
        &database_url(),
        &[
            ("STOREPULSE_LIMIT_STREAMS_PER_CLIENT", "1"),
            ("STOREPULSE_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    helpers::wait_for(
        || server.get("/readyz").1.contains("\"assigned\":true"),
        "partitions assigned",
    )
    .await;
    tokio::task::block_in_place(|| {
        let forwarded = |client: &str| {
            open_with(
                &server.address,
                "/api/stream",
                &format!("X-Forwarded-For: {client}\r\n"),
            )
        };
        let (_first, a) = forwarded("203.0.113.1");
        let (_second, b) = forwarded("203.0.113.2");
        let (_third, again) = forwarded("203.0.113.1");
        let statuses =
            [&a, &b, &again].map(|head| head.lines().next().unwrap_or_default().to_owned());
        assert_eq!(
            statuses,
            [
                "http/1.1 200 ok",
                "http/1.1 200 ok",
                "http/1.1 429 too many requests"
            ]
        );
    });
}
