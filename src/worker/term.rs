//! One term as the group's lease holder: wait for the lease (standby), take the checkpoint
//! line over (recovering), read and checkpoint (reading) until a stop, then the final
//! checkpoint (stopping). A lease that may have lapsed ends the term with `Error::Fenced`
//! before any further commit; [`super::run`] then goes back to standby.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::process::{Processor, Turn, Writing};
use super::{RunOptions, RunSummary, probe_lake};
use crate::error::{Error, Result};
use crate::metrics::{Registry, Role, Stats};
use crate::source::commands::Commands;
use crate::source::lease::Lease;
use crate::source::probe::{self, ProbeTarget};
use crate::source::reader::{self, ReaderMsg};
use crate::window::live::{LiveRequest, LiveSlot, LiveWindows};

/// Waits for the lease, then runs as its holder until a stop; see the module docs.
pub(super) async fn lead<S: Future<Output = ()>>(
    opts: &RunOptions,
    registry: &Registry,
    live: &LiveSlot,
    started: Instant,
    shutdown: &mut Pin<&mut S>,
) -> Result<RunSummary> {
    // One active instance per group: wait (standby) until this one holds the lease.
    let mut lease_cmds = Commands::new(&opts.source.redis, opts.source.retry_timeout)?;
    let (group, consumer) = (&opts.source.group, &opts.source.consumer);
    let on_poll = |holder: Option<&str>| {
        registry.update(|s| {
            s.holder = holder.map(str::to_string);
            s.standby_polled = Some(Instant::now());
        })
    };
    let lease_name = opts.shard.lease_name(group);
    let lease = tokio::select! {
        l = Lease::acquire(&mut lease_cmds, &lease_name, consumer, opts.lease_ttl, on_poll) => l?,
        _ = shutdown.as_mut() => {
            tracing::info!("Shutdown requested while on standby.");
            return Ok(RunSummary { stats: Stats::default(), durable_latency: Default::default(), dedup_ids: 0, elapsed: started.elapsed() });
        }
    };
    tracing::info!(token = lease.token, "Holding the group's lease: this instance reads.");
    registry.update(|s| (s.role, s.holder) = (Role::Recovering, Some(format!("{consumer}/{}", lease.token))));
    let (lost_tx, mut lost_rx) = watch::channel::<Option<String>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Renewed from now on (recovery may take longer than the lease's TTL) until the term's
    // last commit is done: the keeper has a stop of its own, after the final checkpoint.
    let (keeper_stop, keeper_stop_rx) = watch::channel(false);
    let keeper = tokio::spawn(lease.clone().keep(lease_cmds, lost_tx, keeper_stop_rx));
    let started_term = tokio::select! {
        p = Processor::start(opts, lease.fence(), lease.token) => p,
        _ = lost_rx.changed() => Err(Error::Fenced(lost_rx.borrow().clone().unwrap_or_default())),
    };
    let mut p = match started_term {
        Ok(p) => p,
        Err(e) => {
            let _ = keeper_stop.send(true);
            let _ = keeper.await;
            return Err(e);
        }
    };
    registry.update(|s| (s.lake_ok, s.role) = (true, Role::Reading));
    let (tx, mut rx) = mpsc::channel(4);
    let (live_tx, mut live_rx) = mpsc::channel::<LiveRequest>(8);
    // Several shards: shard 0's holder answers (it has the merged windows).
    if !p.pipelines.is_empty() && (!p.pipelines.partial() || opts.shard.index == 0) {
        live.set(Some(LiveWindows {
            lake: p.lake().clone(),
            tables: p.pipelines.output_schemas(),
            requests: live_tx.clone(),
            commits: p.commits.clone(),
        }));
    }
    drop(live_tx);
    let target = ProbeTarget {
        redis: opts.source.redis.clone(),
        group: opts.source.group.clone(),
        streams: opts.source.streams.iter().cloned().zip(p.dlq_keys().iter().cloned()).collect(),
    };
    let probe = tokio::spawn(probe::run(target, registry.clone(), opts.probe_interval, stop_rx.clone()));
    let lake_probe = tokio::spawn(probe_lake(p.lake().clone(), registry.clone(), opts.probe_interval, stop_rx.clone()));
    let read_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (reader, reader_abort) =
        on_own_thread(reader::run(opts.source.clone(), p.read_after(), tx, stop_rx, read_count.clone()));
    let mut reader_abort = Some(reader_abort);
    let publish = |p: &Processor| {
        p.publish(registry);
        registry.update(|s| s.read_count = read_count.load(std::sync::atomic::Ordering::Relaxed));
    };

    // A checkpoint's second half in flight (one at a time); dropped on an error (aborted).
    let mut writing: Option<Writing> = None;
    let result = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_data = Instant::now();
        let mut drained = false;
        let mut last_claim: Option<Instant> = None;
        let mut last_progress = Instant::now();
        let mut bounded_input_done = false;
        loop {
            // In this order: a lost lease, a stop, the checkpoint written, the tick (a checkpoint
            // due is begun even under full load), a live request (answered after at most the
            // batch in progress), then the next batch.
            tokio::select! {
                biased;
                _ = lost_rx.changed() => {
                    let why = lost_rx.borrow().clone().unwrap_or_default();
                    return Err(Error::Fenced(why));
                }
                _ = shutdown.as_mut() => {
                    tracing::info!("Shutdown requested; committing.");
                    break;
                }
                done = written(&mut writing), if writing.is_some() => {
                    writing = None;
                    let turn = Turn::start();
                    p.end_checkpoint(done?).await?;
                    turn.done("end_checkpoint");
                }
                Some(req) = live_rx.recv() => p.answer_live(req).await,
                _ = tick.tick() => {
                    let turn = Turn::start();
                    p.on_tick().await?;
                    publish(&p);
                    turn.done("tick");
                    if writing.is_none() && p.checkpoint_due(opts.checkpoint_interval, opts.roll_age) {
                        let turn = Turn::start();
                        writing = p.checkpoint(false).await?;
                        turn.done("checkpoint");
                    }
                    if !p.noack() && last_claim.is_none_or(|t| t.elapsed() >= opts.claim_interval) {
                        last_claim = Some(Instant::now());
                        let turn = Turn::start();
                        p.claim().await?;
                        turn.done("claim");
                    }
                    if last_progress.elapsed() >= opts.progress_interval {
                        last_progress = Instant::now();
                        p.log_progress(started.elapsed());
                    }
                    if opts.exit_when_idle.is_some_and(|d| drained && last_data.elapsed() >= d) {
                        tracing::info!("Streams drained and idle; closing every window, committing and exiting.");
                        bounded_input_done = true;
                        break;
                    }
                }
                msg = rx.recv() => match msg {
                    Some(ReaderMsg::Batch(batch)) => {
                        last_data = Instant::now();
                        drained = false;
                        p.process(batch).await?;
                    }
                    Some(ReaderMsg::Idle) => drained = true,
                    Some(ReaderMsg::Disconnected(e)) => {
                        drained = false;
                        p.stats.disconnects += 1;
                        tracing::warn!(error = %e, "Reader lost Redis; reconnecting.");
                    }
                    None => break,
                },
            }
        }
        registry.update(|s| s.role = Role::Stopping);
        // Stop reading; process what the reader still passes on (its read in flight).
        let _ = stop_tx.send(true);
        while let Some(msg) = rx.recv().await {
            if let ReaderMsg::Batch(batch) = msg {
                p.process(batch).await?;
            }
        }
        if bounded_input_done {
            p.pipelines.flush()?;
        }
        Ok::<bool, Error>(bounded_input_done)
    }
    .await;
    if result.is_err() {
        // Stopped mid-write, as by a crash: the next holder's recovery finishes or discards it.
        writing = None;
    }

    drop(rx);
    let shutdown_timeout = opts.shutdown_timeout;
    let finished = async {
        let bounded_input_done = result?;
        let last = async {
            if let Some(w) = writing.take() {
                p.end_checkpoint(w.await?).await?;
            }
            p.commit_all(true).await?;
            // Its window states were taken on the window worker: the pipelines come back.
            p.pipelines.settle()?;
            if bounded_input_done {
                // Shard 0 merges what the other shards close at their end too.
                p.finish_merge(shutdown_timeout / 2).await?;
            }
            p.finish_acks().await
        };
        tokio::time::timeout(shutdown_timeout, last).await.map_err(|_| {
            Error::Internal(format!(
                "the final checkpoint did not finish within {shutdown_timeout:?}; nothing after the last \
                 committed checkpoint was acked (a restart resumes from it)"
            ))
        })??;
        tracing::info!(
            epoch = p.stats.checkpoint_epoch,
            archived_rows = p.stats.rows_committed,
            table_rows = p.stats.table_rows_committed,
            acked = p.stats.acked,
            open_windows = p.pipelines.queries().iter().map(|q| q.open_windows()).sum::<usize>(),
            "Stopped cleanly: everything read is in a committed checkpoint (open windows included) and acked."
        );
        Ok::<(), Error>(())
    }
    .await;
    publish(&p);
    let _ = stop_tx.send(true);
    if matches!(finished, Err(Error::Fenced(_))) {
        // Fenced: nothing of theirs matters any more, and a cut-off connection would hold
        // the reader's read (or a renewal) until its response timeout.
        if let Some(abort) = reader_abort.take() {
            let _ = abort.send(());
        }
        for task in [&probe, &lake_probe] {
            task.abort();
        }
        keeper.abort();
    }
    // Each task ends on the stop within a read or a renewal; one that does not (a connection
    // stuck without a reply) is aborted rather than holding the worker's exit.
    let grace = opts.source.block + Duration::from_secs(15);
    join_within(reader, grace, "reader").await;
    join_within(probe, grace, "probe").await;
    join_within(lake_probe, grace, "lake probe").await;
    let _ = keeper_stop.send(true);
    join_within(keeper, grace, "lease keeper").await;
    finished?;
    // Hand over at once (a standby need not wait for the lease to expire).
    let mut release_cmds = Commands::new(&opts.source.redis, opts.source.retry_timeout)?;
    match tokio::time::timeout(opts.lease_ttl.max(Duration::from_secs(1)), lease.release(&mut release_cmds)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Could not release the group's lease; a standby takes over when it expires.")
        }
        Err(_) => tracing::warn!("Releasing the group's lease timed out; a standby takes over when it expires."),
    }
    let summary = RunSummary {
        stats: p.stats.clone(),
        durable_latency: p.durable_exact.clone(),
        dedup_ids: p.dedup_len(),
        elapsed: started.elapsed(),
    };
    p.log_progress(summary.elapsed);
    Ok(summary)
}

/// The checkpoint in flight, once written (never, without one).
async fn written(writing: &mut Option<Writing>) -> Result<super::process::Written> {
    match writing {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Runs `task` on a thread of its own (a current-thread runtime on the blocking pool), so
/// that its latency does not depend on what the runtime's workers are busy with: a task
/// woken on the worker that runs the term's loop would wait for the loop's turn (the reader
/// first: an entry waits for its read). A send on (or a drop of) the returned sender
/// aborts it.
fn on_own_thread<F: Future<Output = ()> + Send + 'static>(
    task: F,
) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (abort_tx, abort_rx) = tokio::sync::oneshot::channel::<()>();
    let handle =
        tokio::task::spawn_blocking(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(async {
                tokio::select! {
                    () = task => {}
                    _ = abort_rx => {}
                }
            }),
            Err(e) => tracing::error!(error = %e, "Cannot start a runtime of its own for a task."),
        });
    (handle, abort_tx)
}

/// Waits for `task` at most `grace`, then aborts it (logged).
async fn join_within<T>(mut task: tokio::task::JoinHandle<T>, grace: Duration, what: &str) {
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        tracing::warn!(task = what, ?grace, "A task did not stop in time; aborted.");
        task.abort();
    }
}
