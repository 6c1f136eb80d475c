//! The resume contract (docs/api.md, "Resume") as one pure function, [`start`]: given the
//! id a client last saw, the frame log, the scope's newest shared snapshot and (when the
//! state's owner decides) the state's position, where its stream starts. The hub, the
//! engine and the stream handler only carry out what it returns.
//!
//! | the client's id `V` | start |
//! |---|---|
//! | none (rule 1) | [`Start::SharedSnapshot`] if the scope's shared one may be reused, else [`Start::Snapshot`] |
//! | a frame still in the log (rule 2) | [`Start::FramesAfter`] it |
//! | behind, no longer in the log (rule 3) | [`Start::SharedSnapshot`] if `V` is at or before it, else [`Start::Snapshot`] |
//! | ahead of the position in some partition (rule 4) | [`Start::WaitUntil`] `V`; asked again after the wait: [`Start::Snapshot`] once caught up, [`Start::Resync`] when it ran out |
//! | malformed, or of another partition layout (rule 5) | [`Start::Resync`] |
//!
//! A shared snapshot may be reused while no frame came after it, or for
//! [`SNAPSHOT_REUSE_MS`] after it was built (a burst of clients shares one). Without the
//! state's owner (the hub answers alone) every start that needs the state is
//! [`Start::AskOwner`]. A store-scoped stream of a store with no event yet is
//! [`Start::UnknownStore`] wherever it would start with a snapshot or a resync. Nothing a
//! client sends can make this panic or answer differently than the table.

use super::log::FrameLog;
use crate::aggregate::{Layout, Position};
use std::cmp::Ordering;

/// How long a scope's shared snapshot is given to new subscribers (with the catch-up after
/// it) once a frame came after it: a burst of clients shares one snapshot.
pub const SNAPSHOT_REUSE_MS: u64 = 250;

/// Where a live subscription starts.
#[derive(Debug, PartialEq)]
pub enum Start {
    /// The scope's shared snapshot, then the frames after it.
    SharedSnapshot,
    /// A snapshot at the state's current position (`event: snapshot`), then the frames
    /// after it.
    Snapshot,
    /// A snapshot sent as `event: resync`: the client's id meant nothing here.
    Resync,
    /// What follows the frame of the client's id (its sequence number): the log's
    /// catch-up after it, then the frames after those. No snapshot.
    FramesAfter(u64),
    /// The client has shown a position this process has not reached: wait (bounded) until
    /// the state is at or past it, then ask again with [`Owner::waited`].
    WaitUntil(Position),
    /// No event of the requested store yet.
    UnknownStore,
    /// Only the state's owner can decide (the hub asked without it).
    AskOwner,
}

/// A scope's newest shared snapshot, as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a> {
    /// The newest frame it contains.
    pub seq: u64,
    /// The position it shows.
    pub position: &'a Position,
    /// Milliseconds since it was built (the caller's clock).
    pub age_ms: u64,
}

/// What only the state's owner knows.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// The state's position.
    pub position: &'a Position,
    /// False for a store-scoped stream of a store with no event yet.
    pub store_known: bool,
    /// Asked again after a [`Start::WaitUntil`]: what the client showed, and whether the
    /// wait (`stream.resume_wait`) ran out.
    pub waited: Option<(&'a Position, bool)>,
}

/// One stream's opening question.
#[derive(Clone, Copy, Debug)]
pub struct Opening<'a> {
    /// The client's last id (`Last-Event-ID` or `?since=`), if any.
    pub since: Option<&'a str>,
    /// The frame log.
    pub log: &'a FrameLog,
    /// The partition layout ids are encoded in.
    pub layout: &'a Layout,
    /// The scope's newest shared snapshot, if there is one.
    pub shared: Option<Shared<'a>>,
    /// The state's owner, when it is the one asking.
    pub owner: Option<Owner<'a>>,
}

/// Where the stream of `opening` starts (the table in this module's doc).
pub fn start(opening: &Opening<'_>) -> Start {
    let known = opening.owner.is_none_or(|owner| owner.store_known);
    let unless_unknown = |start: Start| if known { start } else { Start::UnknownStore };
    if let Some(owner) = opening.owner
        && let Some((wanted, ran_out)) = owner.waited
    {
        let caught_up = wanted
            .compare(owner.position)
            .is_some_and(|o| o != Ordering::Greater);
        return match (caught_up, ran_out) {
            (true, _) => unless_unknown(Start::Snapshot),
            (false, true) => unless_unknown(Start::Resync),
            (false, false) => Start::WaitUntil(wanted.clone()),
        };
    }
    let newest = opening.log.newest_seq();
    let shared = opening
        .shared
        .filter(|s| s.seq == newest || s.age_ms <= SNAPSHOT_REUSE_MS);
    let fresh_snapshot = || match opening.owner {
        Some(_) => unless_unknown(Start::Snapshot),
        None => Start::AskOwner,
    };
    let Some(since) = opening.since else {
        return match shared {
            Some(_) => Start::SharedSnapshot,
            None => fresh_snapshot(),
        };
    };
    if let Some(seq) = opening.log.seq_of(since) {
        return Start::FramesAfter(seq);
    }
    let Ok(wanted) = opening.layout.decode(since) else {
        return match opening.owner {
            Some(_) => unless_unknown(Start::Resync),
            None => Start::AskOwner,
        };
    };
    if let Some(shared) = shared
        && matches!(
            wanted.compare(shared.position),
            Some(Ordering::Less | Ordering::Equal)
        )
    {
        return Start::SharedSnapshot;
    }
    let Some(owner) = opening.owner else {
        return Start::AskOwner;
    };
    match wanted.compare(owner.position) {
        Some(Ordering::Less | Ordering::Equal) => unless_unknown(Start::Snapshot),
        // Ahead in some partition (and maybe behind in another): the client has shown
        // records this state has not applied yet.
        Some(Ordering::Greater) | None => Start::WaitUntil(wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TopicRole;
    use crate::live::delta::Delta;
    use crate::live::frame::Frame;
    use crate::live::log::LogLimits;
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
        SharedSnapshot,
        Snapshot,
        Resync,
        FramesAfter(Vec<u64>),
        WaitUntil(String),
        UnknownStore,
        AskOwner,
    }

    fn outcome(start: Start) -> Expect {
        match start {
            Start::SharedSnapshot => Expect::SharedSnapshot,
            Start::Snapshot => Expect::Snapshot,
            Start::Resync => Expect::Resync,
            Start::FramesAfter(after) => Expect::FramesAfter(
                log()
                    .catch_up(after)
                    .expect("held")
                    .iter()
                    .map(|p| p.last_seq())
                    .collect(),
            ),
            Start::WaitUntil(p) => Expect::WaitUntil(layout().encode(&p)),
            Start::UnknownStore => Expect::UnknownStore,
            Start::AskOwner => Expect::AskOwner,
        }
    }

    /// Who asks: the state's owner (the engine: is the store known?), or the hub alone with
    /// the scope's shared snapshot (its newest frame, position and age in ms), if any.
    #[derive(Clone, Copy)]
    enum Asker {
        Owner(bool),
        Hub(Option<(u64, [i64; 4], u64)>),
    }

    fn decide(since: Option<&str>, asker: Asker) -> Expect {
        let log = log();
        let here = position([5, 0, 0, 0]);
        let held = match asker {
            Asker::Hub(Some((seq, offsets, age_ms))) => Some((seq, position(offsets), age_ms)),
            _ => None,
        };
        let shared = held.as_ref().map(|(seq, position, age_ms)| Shared {
            seq: *seq,
            position,
            age_ms: *age_ms,
        });
        let owner = match asker {
            Asker::Owner(store_known) => Some(Owner {
                position: &here,
                store_known,
                waited: None,
            }),
            Asker::Hub(_) => None,
        };
        outcome(start(&Opening {
            since,
            log: &log,
            layout: &layout(),
            shared,
            owner,
        }))
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
        let engine = Asker::Owner(true);
        let unknown = Asker::Owner(false);
        // The hub with a snapshot at the newest frame (current however old), one at frame 4
        // built 200 ms or 300 ms ago, or none.
        let current = Asker::Hub(Some((5, [5, 0, 0, 0], 60_000)));
        let young = Asker::Hub(Some((4, [4, 0, 0, 0], 200)));
        let stale = Asker::Hub(Some((4, [4, 0, 0, 0], 300)));
        let bare = Asker::Hub(None);
        let cases: Vec<(&str, Option<String>, Asker, Expect)> = vec![
            ("rule 1: no id", None, engine, Expect::Snapshot),
            ("rule 1, unknown store", None, unknown, Expect::UnknownStore),
            (
                "rule 1 at the hub: a current snapshot",
                None,
                current,
                Expect::SharedSnapshot,
            ),
            (
                "rule 1 at the hub: a young one",
                None,
                young,
                Expect::SharedSnapshot,
            ),
            (
                "rule 1 at the hub: a stale one",
                None,
                stale,
                Expect::AskOwner,
            ),
            ("rule 1 at the hub: none", None, bare, Expect::AskOwner),
            (
                "rule 2: a frame in the log",
                Some(id([3, 0, 0, 0])),
                engine,
                Expect::FramesAfter(vec![4, 5]),
            ),
            (
                "rule 2: the newest frame",
                Some(id([5, 0, 0, 0])),
                engine,
                Expect::FramesAfter(vec![]),
            ),
            (
                "rule 2 does not need the store yet",
                Some(id([4, 0, 0, 0])),
                unknown,
                Expect::FramesAfter(vec![5]),
            ),
            (
                "rule 2 at the hub, with no snapshot",
                Some(id([3, 0, 0, 0])),
                bare,
                Expect::FramesAfter(vec![4, 5]),
            ),
            (
                "rule 2 before a shared snapshot",
                Some(id([4, 0, 0, 0])),
                current,
                Expect::FramesAfter(vec![5]),
            ),
            (
                "rule 3: evicted from the log",
                Some(id([1, 0, 0, 0])),
                engine,
                Expect::Snapshot,
            ),
            (
                "rule 3: behind, never a frame",
                Some(id([0, 0, 0, 0])),
                engine,
                Expect::Snapshot,
            ),
            (
                "rule 3, unknown store",
                Some(id([1, 0, 0, 0])),
                unknown,
                Expect::UnknownStore,
            ),
            (
                "rule 3 at the hub: before a young snapshot",
                Some(id([1, 0, 0, 0])),
                young,
                Expect::SharedSnapshot,
            ),
            (
                "rule 3 at the hub: before a stale one",
                Some(id([1, 0, 0, 0])),
                stale,
                Expect::AskOwner,
            ),
            (
                "rule 3 at the hub: past the snapshot in one partition",
                Some(id([0, 0, 1, 0])),
                young,
                Expect::AskOwner,
            ),
            (
                "rule 4: ahead in one partition",
                Some(id([5, 1, 0, 0])),
                engine,
                Expect::WaitUntil(id([5, 1, 0, 0])),
            ),
            (
                "rule 4: ahead in one, behind in another",
                Some(id([4, 0, 0, 9])),
                engine,
                Expect::WaitUntil(id([4, 0, 0, 9])),
            ),
            (
                "rule 4 even for an unknown store",
                Some(id([6, 0, 0, 0])),
                unknown,
                Expect::WaitUntil(id([6, 0, 0, 0])),
            ),
            (
                "rule 4 at the hub: only the owner waits",
                Some(id([6, 0, 0, 0])),
                current,
                Expect::AskOwner,
            ),
            (
                "rule 5: garbage",
                Some("garbage".into()),
                engine,
                Expect::Resync,
            ),
            ("rule 5: empty", Some(String::new()), engine, Expect::Resync),
            (
                "rule 5: another layout",
                Some(foreign),
                engine,
                Expect::Resync,
            ),
            (
                "rule 5: too few offsets",
                Some(format!("{}:1,2", layout().tag())),
                engine,
                Expect::Resync,
            ),
            (
                "rule 5: negative offset",
                Some(id([-1, 0, 0, 0])),
                engine,
                Expect::Resync,
            ),
            (
                "rule 5: an offset past i64",
                Some(format!("{}:{huge},0,0,0", layout().tag())),
                engine,
                Expect::Resync,
            ),
            (
                "rule 5: not text",
                Some("\u{fffd}".into()),
                engine,
                Expect::Resync,
            ),
            (
                "rule 5: newline injection",
                Some(format!("{}\nevent: x", id([3, 0, 0, 0]))),
                engine,
                Expect::Resync,
            ),
            (
                "rule 5, unknown store",
                Some("garbage".into()),
                unknown,
                Expect::UnknownStore,
            ),
            (
                "rule 5 at the hub: the owner sends the resync",
                Some("garbage".into()),
                current,
                Expect::AskOwner,
            ),
        ];
        for (case, since, asker, expected) in cases {
            assert_eq!(decide(since.as_deref(), asker), expected, "{case}");
        }
    }

    #[test]
    fn after_a_wait_a_snapshot_once_caught_up_and_a_resync_when_it_ran_out() {
        let wanted = position([5, 1, 0, 0]);
        let log = log();
        let after = |here: [i64; 4], store_known: bool, ran_out: bool| {
            let here = position(here);
            outcome(start(&Opening {
                since: Some(&id([5, 1, 0, 0])),
                log: &log,
                layout: &layout(),
                shared: None,
                owner: Some(Owner {
                    position: &here,
                    store_known,
                    waited: Some((&wanted, ran_out)),
                }),
            }))
        };
        let waiting = Expect::WaitUntil(id([5, 1, 0, 0]));
        assert_eq!(after([5, 0, 0, 0], true, false), waiting);
        assert_eq!(
            after([9, 0, 3, 3], true, false),
            waiting,
            "still behind in one"
        );
        assert_eq!(after([5, 0, 0, 0], true, true), Expect::Resync, "ran out");
        assert_eq!(after([5, 0, 0, 0], false, true), Expect::UnknownStore);
        assert_eq!(after([5, 1, 0, 0], true, false), Expect::Snapshot);
        assert_eq!(
            after([6, 2, 0, 0], true, true),
            Expect::Snapshot,
            "caught up in time"
        );
        assert_eq!(after([6, 2, 0, 0], false, false), Expect::UnknownStore);
    }
}
