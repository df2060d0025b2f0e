//! One active instance per consumer group: a lease in Redis with a fencing token, and a
//! fence that knows, on this process's monotonic clock, until when the lease is surely held.
//!
//! Several processes may run with the same group (different consumer names) for high
//! availability: the one holding the lease `eventide:lease:{group}` reads, the others wait
//! (standby) and take over when it stops renewing. Only one instance at a time therefore
//! counts the group's events, so a duplicate can never be counted by two instances, and the
//! checkpoints of the group form one line that the next holder continues.
//!
//! The lease value is `<consumer>/<token>`, the token a counter (`INCR eventide:fence:{group}`)
//! that grows with every acquisition. The holder renews it every `ttl / 3`.
//!
//! **Fencing by time, not by failure.** Redis starts a lease's TTL when it *receives* the
//! command that set it, which is after this process *sent* it: so the lease is surely held
//! until `sent + ttl` on our clock (less a safety margin for clock-rate drift and scheduling,
//! [`margin`]). [`Fence`] keeps that deadline; every side effect of a checkpoint (manifest,
//! publish, `XACK`, `XGROUP SETID`, dead letters) is done only while [`Fence::check`] passes,
//! and a renewal is never retried past the deadline. A holder cut off from Redis therefore
//! stops committing before a standby can possibly take over, whatever its renewals do. See
//! ARCHITECTURE.md ("Fencing") for the whole argument, including the successor's side.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use super::commands::Commands;
use crate::error::{Error, Result};

/// Sets the lease when it is free or held by the same consumer name (prefix ARGV[3]): 1, else 0.
const TAKE: &str = r#"local cur = redis.call('GET', KEYS[1])
if cur == false or string.sub(cur, 1, string.len(ARGV[3])) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0"#;
/// Renews the lease if we still hold it (1), else 0.
const RENEW: &str =
    r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"#;
/// Releases the lease if we still hold it.
const RELEASE: &str =
    r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#;

/// A held lease.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    value: String,
    pub token: u64,
    ttl: Duration,
    fence: Fence,
}

/// The safety margin taken off a lease's life: a tenth of the TTL, at least 100 ms (clock-rate
/// drift between this host and Redis is far below that; the rest covers a commit step that
/// passed its check and is still on its way).
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100)).min(ttl / 2)
}

/// Until when (monotonic clock) this process surely holds the lease; cheap to clone and check.
#[derive(Debug, Clone)]
pub struct Fence {
    inner: Arc<Mutex<FenceState>>,
}

#[derive(Debug)]
struct FenceState {
    deadline: Instant,
    /// Wall-clock estimate of `deadline` (unix ms), recorded in manifests.
    deadline_unix_ms: i64,
    lost: Option<String>,
}

impl Fence {
    /// A fence valid until `sent + ttl - margin(ttl)`.
    fn new(sent: Instant, ttl: Duration) -> Fence {
        let f = Fence { inner: Arc::new(Mutex::new(FenceState { deadline: sent, deadline_unix_ms: 0, lost: None })) };
        f.extend(sent, ttl);
        f
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FenceState> {
        // A poisoned lock only means a panic elsewhere; the state itself is always whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A renewal (or the acquisition) sent at `sent` succeeded.
    fn extend(&self, sent: Instant, ttl: Duration) {
        let deadline = sent + ttl.saturating_sub(margin(ttl));
        let mut s = self.state();
        if s.lost.is_none() && deadline > s.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            s.deadline = deadline;
            s.deadline_unix_ms = chrono::Utc::now().timestamp_millis() + left.as_millis() as i64;
        }
    }

    /// Marks the lease lost (a renewal found another holder, or could not be made in time).
    fn lose(&self, why: String) {
        let mut s = self.state();
        s.lost.get_or_insert(why);
        s.deadline = s.deadline.min(Instant::now());
    }

    /// How long the lease is surely held from now; `Err(Fenced)` once it may have lapsed.
    pub fn check(&self) -> Result<Duration> {
        let s = self.state();
        if let Some(why) = &s.lost {
            return Err(Error::Fenced(why.clone()));
        }
        let left = s.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Fenced(
                "the group's lease may have lapsed (no successful renewal within its TTL): stopping before the \
                 next commit"
                    .into(),
            ));
        }
        Ok(left)
    }

    /// Runs one side effect of the lease holder only while the lease is surely held, and no
    /// longer than it is (a step still in flight when the lease may lapse fails as `Fenced`).
    pub async fn guard<T>(&self, step: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let left = self.check()?;
        match tokio::time::timeout(left, step).await {
            Ok(r) => r,
            Err(_) => Err(Error::Fenced(format!("a commit step outlasted the lease's remaining {left:?}"))),
        }
    }

    /// Wall-clock estimate (unix ms) of the moment the lease may lapse.
    pub fn deadline_unix_ms(&self) -> i64 {
        self.state().deadline_unix_ms
    }
}

/// The lease key of `name` (a group, or `<group>:<shard>`).
pub fn key(group: &str) -> String {
    format!("eventide:lease:{{{group}}}")
}

/// The current holder of `group`'s lease (`<consumer>/<token>`), if any.
pub async fn holder(cmds: &mut Commands, group: &str) -> Result<Option<String>> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key(group));
    cmds.query(&cmd).await
}

impl Lease {
    /// Waits until this instance holds the lease (cancel the future to stop waiting);
    /// `on_poll` hears the current holder after every attempt that reached Redis.
    pub async fn acquire(
        cmds: &mut Commands,
        group: &str,
        consumer: &str,
        ttl: Duration,
        mut on_poll: impl FnMut(Option<&str>),
    ) -> Result<Lease> {
        let mut logged = false;
        loop {
            let mut incr = redis::cmd("INCR");
            incr.arg(format!("eventide:fence:{{{group}}}"));
            let token: u64 = cmds.query(&incr).await?;
            let value = format!("{consumer}/{token}");
            let sent = Instant::now();
            // Free, or held by an earlier life of this very consumer (consumer names are
            // unique per instance): take it.
            let mut take = redis::cmd("EVAL");
            take.arg(TAKE).arg(1).arg(key(group)).arg(&value).arg(ttl.as_millis() as u64).arg(format!("{consumer}/"));
            let taken: i64 = cmds.query(&take).await?;
            if taken == 1 {
                return Ok(Lease { key: key(group), value, token, ttl, fence: Fence::new(sent, ttl) });
            }
            let current = holder(cmds, group).await?;
            on_poll(current.as_deref());
            if !logged {
                tracing::info!(holder = %current.unwrap_or_default(), "Standby: another instance holds the group's lease; waiting to take over.");
                logged = true;
            }
            tokio::time::sleep(ttl / 4).await;
        }
    }

    /// Extends the lease, retrying transient failures only while it is surely held; an error
    /// when this instance no longer holds it or could not renew it in time.
    pub async fn renew(&self, cmds: &mut Commands) -> Result<()> {
        let left = self.fence.check()?;
        let sent = Instant::now();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW).arg(1).arg(&self.key).arg(&self.value).arg(self.ttl.as_millis() as u64);
        let held: i64 = match tokio::time::timeout(left, cmds.query(&cmd)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Fenced(format!(
                    "could not renew the group's lease {} within its remaining {left:?}",
                    self.key
                )));
            }
        };
        if held == 1 {
            self.fence.extend(sent, self.ttl);
            Ok(())
        } else {
            Err(Error::Fenced(format!("lost the group's lease {} ({})", self.key, self.value)))
        }
    }

    /// The fence every commit step checks.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Gives the lease up (a standby takes over at once).
    pub async fn release(&self, cmds: &mut Commands) -> Result<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE).arg(1).arg(&self.key).arg(&self.value);
        let _: i64 = cmds.query(&cmd).await?;
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Renews every `ttl / 3` until `stop`; reports a loss on `lost` and returns.
    pub async fn keep(self, mut cmds: Commands, lost: watch::Sender<Option<String>>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.ttl / 3) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.renew(&mut cmds).await {
                tracing::error!(error = %e, "Lost the group's lease: stopping without another checkpoint.");
                self.fence.lose(e.to_string());
                let _ = lost.send(Some(e.to_string()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_fence_lapses_on_time_unless_renewed() {
        let ttl = Duration::from_secs(10);
        let f = Fence::new(Instant::now(), ttl);
        assert_eq!(f.check().unwrap(), ttl - margin(ttl));
        tokio::time::advance(Duration::from_secs(5)).await;
        // A renewal sent now extends it from now.
        f.extend(Instant::now(), ttl);
        assert_eq!(f.check().unwrap(), ttl - margin(ttl));
        // A late answer to an older renewal never moves it back.
        f.extend(Instant::now() - Duration::from_secs(4), ttl);
        assert_eq!(f.check().unwrap(), ttl - margin(ttl));
        tokio::time::advance(ttl - margin(ttl)).await;
        assert!(matches!(f.check(), Err(Error::Fenced(_))), "lapsed at sent + ttl - margin");
        // Once lapsed or lost, no renewal brings it back.
        let g = Fence::new(Instant::now(), ttl);
        g.lose("another holder".into());
        g.extend(Instant::now(), ttl);
        assert!(matches!(g.check(), Err(Error::Fenced(m)) if m == "another holder"));
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_ttl_at_least_100ms() {
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_millis(300)), Duration::from_millis(100));
        assert_eq!(margin(Duration::from_millis(150)), Duration::from_millis(75));
    }
}
