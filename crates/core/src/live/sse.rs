//! Server-Sent Events encoding: the bytes of one event. The only place that knows the wire
//! format; everything a client receives is built here once and shared.

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

#[cfg(test)]
mod tests {
    use super::*;

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
