//! The window worker: one thread that runs the pipelines' work off the term's loop, item by
//! item. An item is one pipeline's (a batch of events, the clock's checks, its part of a
//! checkpoint, see [`super::thread`]). A pipeline's items run in the order they were queued,
//! so results do not depend on where they ran. Pipelines are independent, so the loop can
//! take one back ([`Worker::take`], a live request) while the worker runs another's item: it
//! waits only for an item of that very pipeline that is running, and takes the pipeline's
//! queued items along to run them itself, first. The queue is bounded ([`Worker::new`]'s
//! `max_queued`): past it, the loop waits.
//!
//! The thread runs at nice 10 ([`crate::pool::behind_latency`]): on a machine with few
//! cores, the threads an event's way to a live answer runs on (the reader, the loop, the
//! API, Redis) go first, and the worker takes the cores they leave. The loop waits for it
//! only for a running item of the pipeline it takes back, or when the queue is full.
//!
//! The loop owns the pipelines whenever it has them all back ([`Worker::take_all`]); it
//! hands them over again with [`Worker::put_all`]. A run's error (or panic) is kept and
//! returned by the next call that waits.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Runs one item of pipeline `index` on its query.
pub(super) type RunItem<Q, W> = Box<dyn Fn(&mut Q, usize, W) -> Result<()> + Send + Sync>;

pub(super) struct Worker<Q, W> {
    shared: Arc<Shared<Q, W>>,
    thread: Option<JoinHandle<()>>,
    max_queued: usize,
}

struct Shared<Q, W> {
    inner: Mutex<Inner<Q, W>>,
    /// Every change: the worker waits for items, the loop for pipelines.
    changed: Condvar,
}

struct Inner<Q, W> {
    /// Per pipeline: its query when here and not running (`None`: running, or with the loop).
    queries: Vec<Option<Q>>,
    /// Per pipeline: its items queued or running.
    queued: Vec<usize>,
    queue: VecDeque<(usize, W)>,
    /// The first error of a run, for the next waiting call.
    failure: Option<Error>,
    stop: bool,
}

impl<Q: Send + 'static, W: Send + 'static> Worker<Q, W> {
    /// A worker for `n` pipelines (none handed over yet).
    pub fn new(n: usize, max_queued: usize, run: RunItem<Q, W>) -> Result<Worker<Q, W>> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                queries: (0..n).map(|_| None).collect(),
                queued: vec![0; n],
                queue: VecDeque::new(),
                failure: None,
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("eventide-windows".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    crate::pool::behind_latency();
                    work(&shared, &run)
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the window thread: {e}")))?;
        Ok(Worker { shared, thread: Some(thread), max_queued: max_queued.max(1) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<Q, W>> {
        lock(&self.shared)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Inner<Q, W>>) -> MutexGuard<'a, Inner<Q, W>> {
        self.shared.changed.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands every pipeline over (the loop had them all).
    pub fn put_all(&self, queries: Vec<Q>) {
        let mut g = self.lock();
        for (slot, q) in g.queries.iter_mut().zip(queries) {
            *slot = Some(q);
        }
        self.shared.changed.notify_all();
    }

    /// Queues an item of pipeline `index` (waits while the queue is full).
    pub fn push(&self, index: usize, item: W) -> Result<()> {
        let mut g = self.lock();
        while g.queue.len() >= self.max_queued && g.failure.is_none() {
            g = self.wait(g);
        }
        if let Some(e) = g.failure.take() {
            return Err(e);
        }
        g.queue.push_back((index, item));
        g.queued[index] += 1;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Whether items are queued or running.
    pub fn busy(&self) -> bool {
        self.lock().queued.iter().any(|&n| n > 0)
    }

    /// Per pipeline, its items queued or running.
    pub fn queued(&self) -> Vec<usize> {
        self.lock().queued.clone()
    }

    /// Pipeline `index` (once an item of it that is running is done) and its queued items,
    /// out of the queue: the caller runs them, in order, before anything else on it; give
    /// it back with [`Worker::give`] before queuing anything.
    pub fn take(&self, index: usize) -> Result<(Q, Vec<W>)> {
        let mut g = self.lock();
        loop {
            if let Some(e) = g.failure.take() {
                return Err(e);
            }
            if let Some(q) = g.queries[index].take() {
                let (mine, rest): (VecDeque<_>, VecDeque<_>) = g.queue.drain(..).partition(|(i, _)| *i == index);
                g.queue = rest;
                let items: Vec<W> = mine.into_iter().map(|(_, w)| w).collect();
                g.queued[index] -= items.len();
                self.shared.changed.notify_all();
                return Ok((q, items));
            }
            g = self.wait(g);
        }
    }

    /// Gives back what [`Worker::take`] took.
    pub fn give(&self, index: usize, q: Q) {
        self.lock().queries[index] = Some(q);
        self.shared.changed.notify_all();
    }

    /// Every pipeline, once every item is done.
    pub fn take_all(&self) -> Result<Vec<Q>> {
        let mut g = self.lock();
        loop {
            if let Some(e) = g.failure.take() {
                return Err(e);
            }
            if g.queue.is_empty() && g.queued.iter().all(|&n| n == 0) && g.queries.iter().all(Option::is_some) {
                return Ok(g.queries.iter_mut().filter_map(Option::take).collect());
            }
            g = self.wait(g);
        }
    }
}

impl<Q, W> Drop for Worker<Q, W> {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<Q, W>(shared: &Shared<Q, W>) -> MutexGuard<'_, Inner<Q, W>> {
    shared.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The worker's loop: the next runnable item, run without the lock.
fn work<Q, W>(shared: &Shared<Q, W>, run: &RunItem<Q, W>) {
    let mut g = lock(shared);
    loop {
        if g.stop {
            return;
        }
        let Some(k) = next(&g) else {
            g = shared.changed.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        };
        let Some((index, item)) = g.queue.remove(k) else { continue };
        let Some(mut q) = g.queries[index].take() else { continue };
        drop(g);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut q, index, item)))
            .unwrap_or_else(|_| Err(Error::Internal("a window thread panicked".into())));
        g = lock(shared);
        g.queries[index] = Some(q);
        g.queued[index] -= 1;
        if let Err(e) = outcome
            && g.failure.is_none()
        {
            g.failure = Some(e);
        }
        shared.changed.notify_all();
    }
}

/// The queue position of the next item to run: the first whose pipeline is here (the first
/// item of that pipeline: an earlier one would have been found first).
fn next<Q, W>(g: &Inner<Q, W>) -> Option<usize> {
    g.queue.iter().position(|(i, _)| g.queries[*i].is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queries that record their items in order; item 99 fails.
    fn worker(n: usize, max: usize, delay_ms: u64) -> Worker<Vec<u32>, u32> {
        Worker::new(
            n,
            max,
            Box::new(move |q: &mut Vec<u32>, _: usize, item: u32| {
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                if item == 99 {
                    return Err(Error::Internal("item 99".into()));
                }
                q.push(item);
                Ok(())
            }),
        )
        .unwrap()
    }

    #[test]
    fn each_pipeline_runs_its_items_in_order() {
        let w = worker(3, 4, 0);
        w.put_all(vec![Vec::new(), Vec::new(), Vec::new()]);
        for item in 0..30 {
            w.push((item % 3) as usize, item).unwrap();
        }
        let all = w.take_all().unwrap();
        for (i, q) in all.iter().enumerate() {
            assert_eq!(*q, (0..30).filter(|x| x % 3 == i as u32).collect::<Vec<_>>());
        }
        assert!(!w.busy());
    }

    #[test]
    fn a_pipeline_is_taken_with_its_queued_items_while_another_runs() {
        // Item 7 waits for the gate: the worker is busy with pipeline 0 meanwhile.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let w: Worker<Vec<u32>, u32> = Worker::new(
            2,
            100,
            Box::new({
                let gate = gate.clone();
                move |q: &mut Vec<u32>, _: usize, item: u32| {
                    if item == 7 {
                        let mut open = gate.0.lock().unwrap();
                        while !*open {
                            open = gate.1.wait(open).unwrap();
                        }
                    }
                    q.push(item);
                    Ok(())
                }
            }),
        )
        .unwrap();
        w.put_all(vec![Vec::new(), Vec::new()]);
        for item in [7, 1, 2, 3] {
            w.push(0, item).unwrap();
        }
        w.push(1, 100).unwrap();
        w.push(1, 101).unwrap();
        // Pipeline 0's first item holds the worker: pipeline 1 comes back at once, with its
        // items not run yet.
        let (mut q1, items) = w.take(1).unwrap();
        assert_eq!((q1.clone(), items.clone()), (vec![], vec![100, 101]));
        assert_eq!(w.queued(), vec![4, 0], "pipeline 0: one running, three queued");
        q1.extend(items);
        w.give(1, q1);
        w.push(1, 102).unwrap();
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let all = w.take_all().unwrap();
        assert_eq!(all[0], vec![7, 1, 2, 3]);
        assert_eq!(all[1], vec![100, 101, 102]);
    }

    #[test]
    fn a_failure_is_returned_by_the_next_wait() {
        let w = worker(1, 100, 0);
        w.put_all(vec![Vec::new()]);
        w.push(0, 1).unwrap();
        w.push(0, 99).unwrap();
        w.push(0, 2).unwrap();
        let e = w.take_all().unwrap_err();
        assert!(e.to_string().contains("item 99"), "{e}");
        // Reported once; the items after it still ran.
        assert_eq!(w.take_all().unwrap()[0], vec![1, 2]);
    }

    #[test]
    fn a_full_queue_makes_the_pusher_wait() {
        let w = worker(1, 2, 2);
        w.put_all(vec![Vec::new()]);
        for item in 0..20 {
            w.push(0, item).unwrap();
            assert!(w.lock().queue.len() <= 2);
        }
        assert_eq!(w.take_all().unwrap()[0], (0..20).collect::<Vec<_>>());
    }
}
