//! The resume contract (docs/api.md, "Resume") as one pure function: given the id a client
//! last saw, the frame log and the state's position, where its stream starts.
//!
//! | the client's id `V` | start |
//! |---|---|
//! | none (rule 1) | [`Start::Snapshot`] |
//! | malformed, or of another partition layout (rule 5) | [`Start::Resync`] |
//! | a frame still in the log (rule 2) | [`Start::Replay`] after it |
//! | ahead of the position in some partition (rule 4) | [`Start::WaitUntil`] `V`, then [`after_wait`] |
//! | behind, no longer in the log (rule 3) | [`Start::Snapshot`] |
//!
//! A store-scoped stream of a store with no event yet is [`Start::UnknownStore`] wherever
//! it would start with a snapshot. Nothing a client sends can make this panic or answer
//! differently than the table.

use super::frame::FrameLog;
use crate::aggregate::{Layout, Position};
use std::cmp::Ordering;

/// Where a live subscription starts.
#[derive(Debug)]
pub enum Start {
    /// A snapshot at the current position (`event: snapshot`), then the frames after it.
    Snapshot,
    /// A snapshot sent as `event: resync`: the client's id meant nothing here.
    Resync,
    /// What follows the frame of the client's id (its sequence number): the log's
    /// catch-up after it, then the frames after those. No snapshot.
    Replay(u64),
    /// The client has shown a position this process has not reached: wait (bounded) until
    /// the state is at or past it, then start as [`after_wait`] says.
    WaitUntil(Position),
    /// No event of the requested store yet.
    UnknownStore,
}

/// The start of a subscription whose client last saw `since` (`Last-Event-ID` or
/// `?since=`), for a state at `position` whose frames are in `log`. `store_known` is
/// false for a store-scoped stream of a store with no event yet.
pub fn start(
    since: Option<&str>,
    log: &FrameLog,
    layout: &Layout,
    position: &Position,
    store_known: bool,
) -> Start {
    let snapshot = |start: Start| {
        if store_known {
            start
        } else {
            Start::UnknownStore
        }
    };
    let Some(since) = since else {
        return snapshot(Start::Snapshot);
    };
    let Ok(wanted) = layout.decode(since) else {
        return snapshot(Start::Resync);
    };
    if let Some(seq) = log.seq_of(since) {
        return Start::Replay(seq);
    }
    match wanted.compare(position) {
        Some(Ordering::Less | Ordering::Equal) => snapshot(Start::Snapshot),
        // Ahead in some partition (and maybe behind in another): the client has shown
        // records this state has not applied yet.
        Some(Ordering::Greater) | None => Start::WaitUntil(wanted),
    }
}

/// The start after a [`Start::WaitUntil`]: a snapshot once the state caught up with what
/// the client has shown (it never sees older numbers), a resync if the wait timed out.
pub fn after_wait(wanted: &Position, position: &Position, store_known: bool) -> Option<Start> {
    let caught_up = wanted
        .compare(position)
        .is_some_and(|o| o != Ordering::Greater);
    caught_up.then_some(if store_known {
        Start::Snapshot
    } else {
        Start::UnknownStore
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TopicRole;
    use crate::live::delta::Delta;
    use crate::live::frame::Frame;
    use crate::live::frame::LogLimits;
    use crate::live::sse::Encoded;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn layout() -> Layout {
        Layout::new(vec![
            (TopicRole::Orders, "orders".into(), 2),
            (TopicRole::Inventory, "inventory".into(), 1),
            (TopicRole::Activity, "activity".into(), 1),
        ])
    }

    /// An id of `layout()` whose next offsets are `offsets` (in layout order).
    fn id(offsets: [i64; 4]) -> String {
        let list: Vec<String> = offsets.iter().map(i64::to_string).collect();
        format!("{}:{}", layout().tag(), list.join(","))
    }

    fn position(offsets: [i64; 4]) -> Position {
        layout().decode(&id(offsets)).expect("a valid id")
    }

    /// A log holding frames at positions `[k, 0, 0, 0]` for k in 3..=5 (the first two
    /// were evicted) over a state at `[5, 0, 0, 0]`.
    fn log() -> FrameLog {
        let mut log = FrameLog::new(LogLimits {
            frames: 3,
            bytes: usize::MAX,
            age_ms: u64::MAX,
        });
        for k in 1..=5 {
            let id = id([k, 0, 0, 0]);
            log.push(Arc::new(Frame {
                seq: k as u64,
                id: id.clone(),
                all: Encoded::new(Vec::new()),
                per_store: HashMap::new(),
                size: 1,
                built_ms: 0,
                delta: Arc::new(Delta {
                    position: id,
                    as_of: None,
                    as_of_ms: 0,
                    stores: Default::default(),
                    store_count: None,
                    all_stores: None,
                }),
            }));
        }
        log
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Snapshot,
        Resync,
        Replay(Vec<u64>),
        WaitUntil(String),
        UnknownStore,
    }

    fn outcome(start: Start) -> Expect {
        match start {
            Start::Snapshot => Expect::Snapshot,
            Start::Resync => Expect::Resync,
            Start::Replay(after) => Expect::Replay(
                log()
                    .catch_up(after)
                    .expect("held")
                    .iter()
                    .map(|p| p.last_seq())
                    .collect(),
            ),
            Start::WaitUntil(p) => Expect::WaitUntil(layout().encode(&p)),
            Start::UnknownStore => Expect::UnknownStore,
        }
    }

    #[test]
    fn every_rule_of_the_resume_contract_in_one_table() {
        let other_layout = Layout::new(vec![
            (TopicRole::Orders, "orders".into(), 3),
            (TopicRole::Inventory, "inventory".into(), 1),
            (TopicRole::Activity, "activity".into(), 1),
        ]);
        let foreign = other_layout.encode(&position([5, 0, 0, 0]));
        let huge = "9".repeat(100_000);
        let cases: Vec<(&str, Option<String>, bool, Expect)> = vec![
            ("rule 1: no id", None, true, Expect::Snapshot),
            ("rule 1, unknown store", None, false, Expect::UnknownStore),
            (
                "rule 2: a frame in the log",
                Some(id([3, 0, 0, 0])),
                true,
                Expect::Replay(vec![4, 5]),
            ),
            (
                "rule 2: the newest frame",
                Some(id([5, 0, 0, 0])),
                true,
                Expect::Replay(vec![]),
            ),
            (
                "rule 2 does not need the store yet",
                Some(id([4, 0, 0, 0])),
                false,
                Expect::Replay(vec![5]),
            ),
            (
                "rule 3: evicted from the log",
                Some(id([1, 0, 0, 0])),
                true,
                Expect::Snapshot,
            ),
            (
                "rule 3: behind, never a frame",
                Some(id([0, 0, 0, 0])),
                true,
                Expect::Snapshot,
            ),
            (
                "rule 3, unknown store",
                Some(id([1, 0, 0, 0])),
                false,
                Expect::UnknownStore,
            ),
            (
                "rule 4: ahead in one partition",
                Some(id([5, 1, 0, 0])),
                true,
                Expect::WaitUntil(id([5, 1, 0, 0])),
            ),
            (
                "rule 4: ahead in one, behind in another",
                Some(id([4, 0, 0, 9])),
                true,
                Expect::WaitUntil(id([4, 0, 0, 9])),
            ),
            (
                "rule 4 even for an unknown store",
                Some(id([6, 0, 0, 0])),
                false,
                Expect::WaitUntil(id([6, 0, 0, 0])),
            ),
            (
                "rule 5: garbage",
                Some("garbage".into()),
                true,
                Expect::Resync,
            ),
            ("rule 5: empty", Some(String::new()), true, Expect::Resync),
            (
                "rule 5: another layout",
                Some(foreign),
                true,
                Expect::Resync,
            ),
            (
                "rule 5: too few offsets",
                Some(format!("{}:1,2", layout().tag())),
                true,
                Expect::Resync,
            ),
            (
                "rule 5: negative offset",
                Some(id([-1, 0, 0, 0])),
                true,
                Expect::Resync,
            ),
            (
                "rule 5: an offset past i64",
                Some(format!("{}:{huge},0,0,0", layout().tag())),
                true,
                Expect::Resync,
            ),
            (
                "rule 5: not text",
                Some("\u{fffd}".into()),
                true,
                Expect::Resync,
            ),
            (
                "rule 5: newline injection",
                Some(format!("{}\nevent: x", id([3, 0, 0, 0]))),
                true,
                Expect::Resync,
            ),
            (
                "rule 5, unknown store",
                Some("garbage".into()),
                false,
                Expect::UnknownStore,
            ),
        ];
        let log = log();
        let here = position([5, 0, 0, 0]);
        for (case, since, known, expected) in cases {
            let got = outcome(start(since.as_deref(), &log, &layout(), &here, known));
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn after_a_wait_a_snapshot_only_once_caught_up() {
        let wanted = position([5, 1, 0, 0]);
        assert!(after_wait(&wanted, &position([5, 0, 0, 0]), true).is_none());
        assert!(
            after_wait(&wanted, &position([9, 0, 3, 3]), true).is_none(),
            "still behind in one"
        );
        assert!(matches!(
            after_wait(&wanted, &position([5, 1, 0, 0]), true),
            Some(Start::Snapshot)
        ));
        assert!(matches!(
            after_wait(&wanted, &position([6, 2, 0, 0]), true),
            Some(Start::Snapshot)
        ));
        assert!(matches!(
            after_wait(&wanted, &position([6, 2, 0, 0]), false),
            Some(Start::UnknownStore)
        ));
    }
}
