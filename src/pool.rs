//! The encoding pool: a fixed set of threads for CPU-bound work off the async runtime
//! (Parquet and Arrow IPC encoding, decoding checkpoint blobs). Beside `entry`, `names` and
//! `error` at the bottom of the layers: it knows nothing of what it runs.
//!
//! Why not `tokio::task::spawn_blocking`: the blocking pool grows to 512 threads when work
//! queues, and a checkpoint that hands a thousand open files' last rows to it at once got a
//! thread (and, with mimalloc, a thread heap that keeps what it touched) for most of them;
//! the peak RSS of a flood of event types grew with the number of threads, not with the
//! data. Here as many threads as cores encode, the rest of the work waits in order, and
//! memory follows the data (its bounds are the archive's: [`crate::sink::archive`]). The
//! blocking pool stays for file and network I/O that may wait.
//!
//! Jobs never wait on each other or on the runtime (they could deadlock a fixed pool).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::{future::Future, panic::AssertUnwindSafe, pin::Pin};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs queued beyond the running ones before [`spawn`] blocks its caller (each queued job
/// holds its input: the callers bound how much that is).
const QUEUE: usize = 4096;

static POOL: OnceLock<SyncSender<Job>> = OnceLock::new();

/// The nice value of the pool's threads: encoding is throughput work, so under contention for
/// the cores the threads that a live answer waits on (the runtime's: reading, processing,
/// answering) run first. It takes the same cores when they are free.
const NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to nice 10 (Linux: the nice value is
/// per thread). Best effort: a refusal leaves it as it was. The encoding pool's threads and
/// the window worker ([`crate::window`]) call it.
pub(crate) fn behind_latency() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority on the calling thread; no memory is touched.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
    }
}

/// Threads in the pool: one per core, at least 2, at most 8.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

fn pool() -> &'static SyncSender<Job> {
    POOL.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads() {
            let rx = Arc::clone(&rx);
            // A thread that cannot start leaves the others (the first one failing is reported
            // by every job then: its sender sees no receiver).
            let _ = std::thread::Builder::new().name(format!("eventide-encode-{i}")).spawn(move || work(&rx));
        }
        tx
    })
}

fn work(rx: &Mutex<Receiver<Job>>) {
    behind_latency();
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// A job's result, awaited like a `JoinHandle`.
pub struct Task<T> {
    rx: oneshot::Receiver<std::thread::Result<T>>,
}

impl<T> Task<T> {
    /// The job is done (awaiting the task returns at once).
    pub fn is_finished(&self) -> bool {
        !self.rx.is_empty() || self.rx.is_terminated()
    }

    /// The result if the job is done (`None`: still queued or running), without waiting:
    /// for synchronous code that checks now and then. Once it returned `Some`, it returns
    /// an error.
    pub fn try_take(&mut self) -> Option<Result<T>> {
        match self.rx.try_recv() {
            Ok(r) => Some(unwind(r)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::Internal("encoding pool stopped".into()))),
        }
    }
}

/// A job's outcome, its panic as an error.
fn unwind<T>(r: std::thread::Result<T>) -> Result<T> {
    r.map_err(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Error::Internal(format!("encoding job panicked: {msg}"))
    })
}

impl<T> Future for Task<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(r) => unwind(r),
            Err(_) => Err(Error::Internal("encoding pool stopped".into())),
        })
    }
}

/// Runs `f` on the encoding pool; the task yields its result. A panic in `f` comes back as
/// an error (the pool's thread goes on).
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    // A send only fails when no pool thread runs: the task then reports the stopped pool.
    let _ = pool().send(job);
    Task { rx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_panics_come_back_as_errors() {
        let tasks: Vec<_> = (0..100u64).map(|i| spawn(move || i * 2)).collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        assert_eq!(sum, 9900);
        let err = spawn(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(spawn(|| 7).await.unwrap(), 7, "the pool goes on after a panic");
    }

    #[tokio::test]
    async fn a_finished_task_says_so() {
        let t = spawn(|| 1);
        while !t.is_finished() {
            tokio::task::yield_now().await;
        }
        assert_eq!(t.await.unwrap(), 1);
    }

    #[test]
    fn at_most_eight_threads() {
        assert!((2..=8).contains(&threads()));
    }
}
