//! Server-Sent Events encoding: the bytes of one event, and their shared compressed form.
//! The only place that knows the wire format; everything a client receives is built here
//! once and shared.
//!
//! Compression is shared too: each event is deflated once, on its own (a fresh compressor,
//! ended by a sync flush, never a final block), so the same compressed bytes continue any
//! client's gzip stream wherever they are written. A gzip client receives [`GZIP_HEADER`]
//! first, then the [`Encoded::deflated`] form of every event it would have received.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use std::sync::OnceLock;

/// The event names a stream sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotEvent {
    /// `event: snapshot`: the whole view, at the position of its id (rules 1, 3, 4).
    Snapshot,
    /// `event: resync`: the same, but the client's id was not understood here or a wait
    /// for it timed out (rule 5): the client replaces what it holds.
    Resync,
}

impl SnapshotEvent {
    /// The SSE event name.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotEvent::Snapshot => "snapshot",
            SnapshotEvent::Resync => "resync",
        }
    }
}

/// Encodes one SSE event. `data` must be one line (JSON without raw newlines).
pub fn sse_event(event: &str, id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// How a stream's bytes are sent (`Content-Encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// As they are.
    Identity,
    /// A gzip stream of independently deflated events.
    Gzip,
}

impl Encoding {
    /// The encoding for a request's `Accept-Encoding`: gzip when it is accepted with a
    /// non-zero quality (`gzip`, `x-gzip`, or `*`), else identity.
    pub fn negotiate(accept_encoding: Option<&str>) -> Encoding {
        let accepts_gzip = accept_encoding.unwrap_or_default().split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let named = coding.eq_ignore_ascii_case("gzip")
                || coding.eq_ignore_ascii_case("x-gzip")
                || coding == "*";
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            named && !refused
        });
        if accepts_gzip {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }
}

/// The first bytes of every gzip stream: the member header (deflate, no name, no time,
/// unknown OS). The stream has no trailer: it ends only when its connection does.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Makes an event's bytes on first use.
type Make = Box<dyn FnOnce() -> Bytes + Send>;

/// One event's bytes, shared by every client: as they are (made at once, or by the first
/// reader for a [deferred](Encoded::deferred) event), and deflated (once, on first use by a
/// gzip client).
pub struct Encoded {
    plain: OnceLock<Bytes>,
    make: std::sync::Mutex<Option<Make>>,
    deflated: OnceLock<Bytes>,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("plain", &self.plain.get().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl Encoded {
    /// Wraps an event's bytes.
    pub fn new(plain: impl Into<Bytes>) -> Encoded {
        Encoded {
            plain: OnceLock::from(plain.into()),
            make: std::sync::Mutex::new(None),
            deflated: OnceLock::new(),
        }
    }

    /// An event whose bytes `make` makes when a client first needs them (a large snapshot:
    /// serialised by the first stream that writes it, not by whoever shares it).
    pub fn deferred(make: impl FnOnce() -> Bytes + Send + 'static) -> Encoded {
        Encoded {
            plain: OnceLock::new(),
            make: std::sync::Mutex::new(Some(Box::new(make))),
            deflated: OnceLock::new(),
        }
    }

    /// The bytes as they are.
    pub fn plain(&self) -> &Bytes {
        self.plain.get_or_init(|| {
            let make = self
                .make
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            make.map_or_else(Bytes::new, |make| make())
        })
    }

    /// The bytes as one independent deflate segment (see the module doc).
    pub fn deflated(&self) -> &Bytes {
        self.deflated.get_or_init(|| deflate_segment(self.plain()))
    }

    /// The bytes a client with `encoding` is written.
    pub fn for_encoding(&self, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::Identity => self.plain().clone(),
            Encoding::Gzip => self.deflated().clone(),
        }
    }

    /// Length of the plain bytes.
    pub fn len(&self) -> usize {
        self.plain().len()
    }

    /// True if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.plain().is_empty()
    }
}

/// `data` deflated by a fresh compressor and sync-flushed: byte-aligned, no final block,
/// no reference to anything before it, so it may follow any other segment.
fn deflate_segment(data: &[u8]) -> Bytes {
    let mut compress = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    loop {
        let consumed = usize::try_from(compress.total_in()).unwrap_or(usize::MAX);
        let input = data.get(consumed..).unwrap_or_default();
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        compress
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .unwrap_or_else(|e| panic!("deflate into memory cannot fail: {e}"));
        let done = usize::try_from(compress.total_in()).unwrap_or(usize::MAX) == data.len();
        // As zlib documents: a flush is complete once it returns with output room to spare.
        if done && out.len() < out.capacity() {
            break;
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deferred event is made by its first reader, once, whichever encoding it reads.
    #[test]
    fn a_deferred_event_is_made_once_by_its_first_reader() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let made = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let event = Arc::new(Encoded::deferred(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Bytes::from(sse_event("snapshot", Some("t:1"), b"{}"))
        }));
        assert_eq!(
            made.load(Ordering::SeqCst),
            0,
            "nothing made before a reader"
        );
        let readers: Vec<_> = (0..4)
            .map(|i| {
                let event = Arc::clone(&event);
                std::thread::spawn(move || {
                    let encoding = if i % 2 == 0 {
                        Encoding::Identity
                    } else {
                        Encoding::Gzip
                    };
                    event.for_encoding(encoding).len()
                })
            })
            .collect();
        for reader in readers {
            assert!(reader.join().expect("no panic") > 0);
        }
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert_eq!(
            event.plain().as_ref(),
            b"event: snapshot\nid: t:1\ndata: {}\n\n"
        );
    }

    #[test]
    fn independently_deflated_events_form_one_gzip_stream() {
        use std::io::Read;
        let events: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                sse_event(
                    "delta",
                    Some(&format!("t:{i}")),
                    format!("{{\"n\":{i}}}").repeat(i * 50 + 1).as_bytes(),
                )
            })
            .collect();
        let mut stream = GZIP_HEADER.to_vec();
        for event in &events {
            stream.extend_from_slice(Encoded::new(event.clone()).deflated());
        }
        // A stream cut anywhere after a segment decodes to exactly the events before it.
        let mut decoded = Vec::new();
        let _ = flate2::read::GzDecoder::new(stream.as_slice()).read_to_end(&mut decoded);
        assert_eq!(decoded, events.concat());
        let big = sse_event("delta", None, &vec![b'x'; 300_000]);
        let mut decoded = Vec::new();
        let mut one = GZIP_HEADER.to_vec();
        one.extend_from_slice(&deflate_segment(&big));
        let _ = flate2::read::GzDecoder::new(one.as_slice()).read_to_end(&mut decoded);
        assert_eq!(decoded, big, "larger than any first output buffer");
        assert!(deflate_segment(&big).len() < 2_000);
    }

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        for (header, expected) in [
            (None, Encoding::Identity),
            (Some(""), Encoding::Identity),
            (Some("gzip, deflate, br, zstd"), Encoding::Gzip),
            (Some("br;q=1.0, GZIP;q=0.5"), Encoding::Gzip),
            (Some("gzip;q=0"), Encoding::Identity),
            (Some("gzip; q=0.0, identity"), Encoding::Identity),
            (Some("*"), Encoding::Gzip),
            (Some("deflate, br"), Encoding::Identity),
            (Some("gzipx"), Encoding::Identity),
        ] {
            assert_eq!(Encoding::negotiate(header), expected, "{header:?}");
        }
    }

    #[test]
    fn an_event_is_framed_with_its_id_and_a_blank_line() {
        assert_eq!(
            sse_event("delta", Some("t:1"), b"{}"),
            b"event: delta\nid: t:1\ndata: {}\n\n"
        );
        assert_eq!(
            sse_event("progress", None, b"1"),
            b"event: progress\ndata: 1\n\n"
        );
    }
}
