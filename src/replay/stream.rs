//! Watching a past sale: a replay streamed over the live stream's protocol (a snapshot at
//! `from`, then deltas paced by event time ÷ speed, then `event: end`), so the dashboard
//! renders it with the code it renders live with.
//!
//! Ids live in their own namespace, `R1.<tag>.<position>`: the tag names the request (range,
//! speed, store), so a replay id sent to the live stream is not an id there (rule 5:
//! resync), a live id (or another replay's) sent here restarts this replay from its
//! snapshot, and this replay's own id resumes it exactly: the state is rebuilt up to that
//! position and the deltas after it follow. Each replay has its own consumer on its own
//! thread (scheduled `SCHED_IDLE`: it yields to the live path), at most `max_concurrent` at
//! once; one whose client went away stops at its next write.

use super::{End, Plan, ReplayError, ReplayOptions};
use crate::aggregate::Changes;
use crate::config::Settings;
use crate::events::StoreId;
use crate::live::{FrameBuilder, sse_event};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Longest a replay waits before writing what changed (wall time).
const FRAME_EVERY: Duration = Duration::from_millis(100);

/// A replay to stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Start (Unix ms, record time).
    pub from_ms: i64,
    /// End (Unix ms, record time, exclusive).
    pub to_ms: i64,
    /// Event time runs this many times faster than the wall clock.
    pub speed: u32,
    /// One store only.
    pub store: Option<StoreId>,
}

impl ReplayRequest {
    /// The 8 hex digits that name this request in its ids.
    pub fn tag(&self) -> String {
        let key = format!(
            "{}|{}|{}|{}",
            self.from_ms,
            self.to_ms,
            self.speed,
            self.store.as_ref().map_or("", |s| s.0.as_str())
        );
        format!("{:08x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()) >> 32)
    }

    /// The position a `Last-Event-ID` resumes at: only this request's own ids.
    pub fn resume_position<'a>(&self, last_event_id: Option<&'a str>) -> Option<&'a str> {
        let rest = last_event_id?.strip_prefix("R1.")?;
        let (tag, position) = rest.split_once('.')?;
        (tag == self.tag()).then_some(position)
    }
}

/// The replays of one process: settings and the concurrency bound.
#[derive(Debug)]
pub struct ReplayService {
    settings: Arc<Settings>,
    slots: Arc<Semaphore>,
    tasks: tokio_util::task::TaskTracker,
}

/// Every slot is taken.
#[derive(Debug)]
pub struct Busy;

impl ReplayService {
    /// At most `max_concurrent` replays at once.
    /// At most `max_concurrent` replays at once, each on a thread tracked by `tasks`.
    pub fn new(
        settings: Arc<Settings>,
        max_concurrent: usize,
        tasks: tokio_util::task::TaskTracker,
    ) -> ReplayService {
        ReplayService {
            settings,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            tasks,
        }
    }

    /// Starts a replay on its own thread; its SSE bytes arrive on the receiver, which
    /// closes after `event: end` (or an `event: error`).
    pub fn start(
        &self,
        request: ReplayRequest,
        last_event_id: Option<&str>,
    ) -> Result<mpsc::Receiver<Bytes>, Busy> {
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let (tx, rx) = mpsc::channel(64);
        let settings = Arc::clone(&self.settings);
        let tx = Out {
            tx,
            stall: settings.stream.stall_timeout,
        };
        let resume = request.resume_position(last_event_id).map(str::to_owned);
        let runtime = tokio::runtime::Handle::current();
        crate::tasks::spawn_thread(&self.tasks, "storepulse-replay", move || {
            lowest_priority();
            let _entered = runtime.enter();
            stream(&settings, &request, resume.as_deref(), &tx, permit);
        })
        .map_err(|_| Busy)?;
        Ok(rx)
    }
}

/// Replays yield to everything else: this thread, and the consumer threads librdkafka
/// starts from it (they inherit it), run under `SCHED_IDLE`, only when a core would
/// otherwise idle, so the live ingest and live clients keep their share on a busy machine.
/// Where that is not allowed, the replay runs at normal priority (logged).
fn lowest_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    if let Err(error) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    ) {
        tracing::debug!(?error, "replay thread keeps normal priority");
    }
}

/// The client went away: stop.
struct Gone;

/// Where a replay's bytes go: the HTTP response's channel, and how long a client may
/// leave it full (`stream.stall_timeout`; zero: forever) before the replay gives up.
pub(crate) struct Out {
    tx: mpsc::Sender<Bytes>,
    stall: std::time::Duration,
}

/// Sends bytes to the client. A client that reads nothing (its socket and then the channel
/// full) for the stall timeout is gone too: the replay ends and gives its slot back.
fn send(out: &Out, bytes: Vec<u8>) -> Result<(), Gone> {
    use tokio::sync::mpsc::error::TrySendError;
    let mut bytes = Bytes::from(bytes);
    let deadline = std::time::Instant::now() + out.stall;
    loop {
        match out.tx.try_send(bytes) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(Gone),
            Err(TrySendError::Full(back)) => {
                if !out.stall.is_zero() && std::time::Instant::now() >= deadline {
                    tracing::info!(stall = ?out.stall, "a replay stream's client read nothing for the stall timeout; the replay ends");
                    return Err(Gone);
                }
                bytes = back;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn stream(
    settings: &Settings,
    request: &ReplayRequest,
    resume: Option<&str>,
    tx: &Out,
    _permit: OwnedSemaphorePermit,
) {
    if let Err(error) = run(settings, request, resume, tx) {
        let message = serde_json::json!({ "error": error.to_string() }).to_string();
        let _ = send(tx, sse_event("error", None, message.as_bytes()));
    }
}

fn run(
    settings: &Settings,
    request: &ReplayRequest,
    resume: Option<&str>,
    tx: &Out,
) -> Result<(), ReplayError> {
    let options = ReplayOptions {
        from_ms: request.from_ms,
        from_position: None,
        end: End::Time(request.to_ms),
        every_ms: Some((request.to_ms - request.from_ms).max(1)),
        store: request.store.clone(),
        format: super::Format::Jsonl,
        alerts: false,
        progress: false,
        dry_run: false,
    };
    let super::Opened {
        consumer,
        plan,
        mut reader,
        resumed,
        ..
    } = super::open(settings, &options, resume, true)?;
    let tag = request.tag();
    let pacer = std::cell::RefCell::new(Pacer {
        tag: &tag,
        plan: &plan,
        request,
        tx,
        builder: FrameBuilder::new(),
        started: Instant::now(),
        last_frame: Instant::now(),
        begun: false,
    });
    let steps = plan.steps.len();
    let mut step_index = 0;
    let result = reader.read_steps(
        &consumer,
        &plan,
        |reader, _step| {
            step_index += 1;
            if step_index == 1 {
                pacer.borrow_mut().begin(reader, resumed.is_none())
            } else if step_index == steps {
                pacer.borrow_mut().finish(reader)
            } else {
                Ok(())
            }
        },
        |reader, timestamp| pacer.borrow_mut().record(reader, timestamp),
    );
    match result {
        Err(ReplayError::Output(_)) => Ok(()), // the client went away
        other => other,
    }
}

/// Writes a replay at its speed: frames of what changed, at most every [`FRAME_EVERY`],
/// waiting before a record until the wall clock has caught up with its event time.
struct Pacer<'a> {
    tag: &'a str,
    plan: &'a Plan,
    request: &'a ReplayRequest,
    tx: &'a Out,
    builder: FrameBuilder,
    started: Instant,
    last_frame: Instant,
    begun: bool,
}

fn gone(_: Gone) -> ReplayError {
    ReplayError::Output(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the client went away",
    ))
}

impl Pacer<'_> {
    fn id(&self, position: &str) -> String {
        format!("R1.{}.{position}", self.tag)
    }

    /// At the first step: the snapshot (unless resuming), and the clock starts.
    fn begin(&mut self, reader: &mut super::Reader, snapshot: bool) -> Result<(), ReplayError> {
        let _ = send(self.tx, b"retry: 1000\n\n".to_vec());
        if snapshot {
            let id = self.id(&self.plan.layout.encode(reader.state.position()));
            // The all-stores scope opens with the rollup (as a live stream does).
            let view = match self.request.store.as_ref() {
                None => Some(
                    serde_json::to_vec(&reader.state.rollup_snapshot(&self.plan.layout))
                        .map_err(std::io::Error::from)?,
                ),
                Some(store) => reader
                    .state
                    .snapshot(&self.plan.layout, Some(store))
                    .map(|view| serde_json::to_vec(&view))
                    .transpose()
                    .map_err(std::io::Error::from)?,
            };
            let json = match view {
                Some(json) => json,
                // A store with no event yet at `from`: an empty view of it.
                None => serde_json::to_vec(&serde_json::json!({
                    "position": self.plan.layout.encode(reader.state.position()),
                    "as_of": null,
                    "as_of_ms": 0,
                    "stores": {},
                }))
                .map_err(std::io::Error::from)?,
            };
            send(self.tx, sse_event("snapshot", Some(&id), &json)).map_err(gone)?;
        }
        reader.changes = Changes::default();
        self.started = Instant::now();
        self.last_frame = Instant::now();
        self.begun = true;
        Ok(())
    }

    /// After each record: wait for its event time, write a frame when one is due.
    fn record(
        &mut self,
        reader: &mut super::Reader,
        timestamp: Option<i64>,
    ) -> Result<(), ReplayError> {
        if !self.begun {
            return Ok(()); // still warming up to the first step
        }
        if let Some(at) = timestamp {
            let due = Duration::from_millis(
                u64::try_from((at - self.request.from_ms).max(0)).unwrap_or(0)
                    / u64::from(self.request.speed.max(1)),
            );
            while self.started.elapsed() < due {
                if self.tx.tx.is_closed() {
                    return Err(gone(Gone));
                }
                self.frame(reader)?;
                std::thread::sleep(due.saturating_sub(self.started.elapsed()).min(FRAME_EVERY));
            }
        }
        if self.last_frame.elapsed() >= FRAME_EVERY {
            self.frame(reader)?;
        }
        Ok(())
    }

    /// A frame of what changed since the last one (nothing if nothing did).
    fn frame(&mut self, reader: &mut super::Reader) -> Result<(), ReplayError> {
        self.last_frame = Instant::now();
        if reader.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut reader.changes);
        let built_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let frame = self
            .builder
            .build(&reader.state, &self.plan.layout, &changes, built_ms);
        let Some(encoded) = frame.bytes_for(self.request.store.as_ref()) else {
            return Ok(()); // nothing of this store changed
        };
        // The frame's id line is its live position: the same bytes with the replay's id.
        let plain = encoded.plain();
        let live_prefix = format!("event: delta\nid: {}\n", frame.id);
        let bytes = match plain.strip_prefix(live_prefix.as_bytes()) {
            Some(rest) => {
                let mut out = format!("event: delta\nid: {}\n", self.id(&frame.id)).into_bytes();
                out.extend_from_slice(rest);
                out
            }
            None => plain.to_vec(),
        };
        send(self.tx, bytes).map_err(gone)
    }

    /// At the last step: the last frame, then `end`.
    fn finish(&mut self, reader: &mut super::Reader) -> Result<(), ReplayError> {
        self.frame(reader)?;
        let position = self.plan.layout.encode(reader.state.position());
        let data = serde_json::json!({
            "position": position,
            "records": reader.summary.records,
        })
        .to_string();
        send(
            self.tx,
            sse_event("end", Some(&self.id(&position)), data.as_bytes()),
        )
        .map_err(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_reads_nothing_for_the_stall_timeout_is_gone() {
        let (tx, mut rx) = mpsc::channel(1);
        let out = Out {
            tx,
            stall: std::time::Duration::from_millis(50),
        };
        assert!(send(&out, b"one".to_vec()).is_ok());
        let started = std::time::Instant::now();
        assert!(
            send(&out, b"two".to_vec()).is_err(),
            "full for the stall timeout"
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        // A client that reads in time is not.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let first = rx.blocking_recv();
            let second = rx.blocking_recv();
            (first, second)
        });
        assert!(send(&out, b"three".to_vec()).is_ok());
        drop(out);
        let (first, second) = reader.join().expect("reader");
        assert_eq!(first.as_deref(), Some(&b"one"[..]));
        assert_eq!(second.as_deref(), Some(&b"three"[..]));
    }

    #[test]
    fn only_this_requests_own_ids_resume_it() {
        let request = ReplayRequest {
            from_ms: 1,
            to_ms: 2,
            speed: 10,
            store: None,
        };
        let tag = request.tag();
        assert_eq!(tag.len(), 8);
        let own = format!("R1.{tag}.0badc0de:1,2");
        assert_eq!(request.resume_position(Some(&own)), Some("0badc0de:1,2"));
        let other = ReplayRequest {
            speed: 60,
            ..request.clone()
        };
        assert_ne!(other.tag(), tag, "speed is part of the tag");
        assert_eq!(other.resume_position(Some(&own)), None);
        assert_eq!(
            request.resume_position(Some("0badc0de:1,2")),
            None,
            "a live id restarts"
        );
        assert_eq!(request.resume_position(None), None);
        assert_eq!(request.resume_position(Some("R1.")), None);
    }
}
