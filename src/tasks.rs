//! `serve`'s one [`TaskTracker`]: every task and OS thread it starts is spawned through
//! it, so shutdown waits for all of them (`app.rs`). Tokio tasks go through
//! `TaskTracker::spawn`; an OS thread (the ingest loop, the accept loop, replays, the
//! dead-letter topic's creation) through [`spawn_thread`], which holds a tracker token
//! until the thread ends.
//!
//! The one exception is the signal handler in `main.rs`: it outlives `serve` to turn a
//! second signal into an abort.

use tokio_util::task::TaskTracker;

/// Starts `work` on an OS thread named `name`, tracked by `tasks` until it returns. Fails
/// only when the thread cannot be created.
pub fn spawn_thread<T: Send + 'static>(
    tasks: &TaskTracker,
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<std::thread::Result<T>>> {
    let (done, result) = tokio::sync::oneshot::channel();
    // Counts as a task of the tracker until the thread drops it: no runtime needed, so a
    // thread may start another (the ingest thread starts the dead-letter topic's).
    let token = tasks.token();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = done.send(outcome);
            drop(token);
        })?;
    Ok(result)
}

/// Calls `reload` on every SIGHUP until `stop` (a task of `tasks`): key and certificate
/// files are re-read so (auth keys, the TLS certificate).
pub fn on_hangup(
    tasks: &TaskTracker,
    stop: tokio_util::sync::CancellationToken,
    reload: impl Fn() + Send + 'static,
) {
    tasks.spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while let Some(()) = tokio::select! {
            hangup = hangups.recv() => hangup,
            () = stop.cancelled() => None,
        } {
            reload();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_thread_is_waited_for_and_gives_back_its_result_or_its_panic() {
        // Started from a thread with no runtime, as the ingest thread does.
        let tasks = TaskTracker::new();
        let outer = tasks.clone();
        std::thread::spawn(move || spawn_thread(&outer, "nested", || 7).map(|_| ()))
            .join()
            .expect("no panic")
            .expect("a thread");
        tasks.close();
        tasks.wait().await;
        let tasks = TaskTracker::new();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let result = spawn_thread(&tasks, "test-thread", move || {
            let _ = hold.recv();
            std::thread::current().name().map(str::to_owned)
        })
        .expect("a thread");
        tasks.close();
        assert_eq!(tasks.len(), 1, "tracked while it runs");
        release.send(()).expect("the thread waits");
        tasks.wait().await;
        let name = result.await.expect("sent").expect("no panic");
        assert_eq!(name.as_deref(), Some("test-thread"));
        let tasks = TaskTracker::new();
        let panicked =
            spawn_thread(&tasks, "panics", || -> () { panic!("on purpose") }).expect("a thread");
        tasks.close();
        tasks.wait().await;
        assert!(
            panicked.await.expect("sent").is_err(),
            "the panic is the result"
        );
    }
}
