//! One active instance per consumer group: a lease in Redis with a fencing token.
//!
//! Several processes may run with the same group (different consumer names) for high
//! availability: the one holding the lease `eventide:lease:{group}` reads, the others wait
//! (standby) and take over when it stops renewing. Only one instance at a time therefore
//! counts the group's events, so a duplicate can never be counted by two instances, and the
//! checkpoints of the group form one line that the next holder continues.
//!
//! The lease value is `<consumer>/<token>`, the token a counter (`INCR eventide:fence:{group}`)
//! that grows with every acquisition. The holder renews it every `ttl / 3`; a failed renewal
//! means another instance may be active: the holder stops at once (before its next
//! checkpoint). Checkpoint manifests are written create-only, so even a holder paused past its
//! lease (a zombie) cannot overwrite the checkpoint of the instance that replaced it.

use std::time::Duration;

use tokio::sync::watch;

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
}

fn key(group: &str) -> String {
    format!("eventide:lease:{{{group}}}")
}

/// The current holder of `group`'s lease (`<consumer>/<token>`), if any.
pub async fn holder(cmds: &mut Commands, group: &str) -> Result<Option<String>> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key(group));
    cmds.query(&cmd).await
}

impl Lease {
    /// Waits until this instance holds the lease (cancel the future to stop waiting).
    pub async fn acquire(cmds: &mut Commands, group: &str, consumer: &str, ttl: Duration) -> Result<Lease> {
        let mut logged = false;
        loop {
            let mut incr = redis::cmd("INCR");
            incr.arg(format!("eventide:fence:{{{group}}}"));
            let token: u64 = cmds.query(&incr).await?;
            let value = format!("{consumer}/{token}");
            // Free, or held by an earlier life of this very consumer (consumer names are
            // unique per instance): take it.
            let mut take = redis::cmd("EVAL");
            take.arg(TAKE).arg(1).arg(key(group)).arg(&value).arg(ttl.as_millis() as u64).arg(format!("{consumer}/"));
            let taken: i64 = cmds.query(&take).await?;
            if taken == 1 {
                return Ok(Lease { key: key(group), value, token, ttl });
            }
            if !logged {
                let current = holder(cmds, group).await?.unwrap_or_default();
                tracing::info!(holder = %current, "Standby: another instance holds the group's lease; waiting to take over.");
                logged = true;
            }
            tokio::time::sleep(ttl / 4).await;
        }
    }

    /// Extends the lease; an error when this instance no longer holds it.
    pub async fn renew(&self, cmds: &mut Commands) -> Result<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW).arg(1).arg(&self.key).arg(&self.value).arg(self.ttl.as_millis() as u64);
        let held: i64 = cmds.query(&cmd).await?;
        if held == 1 {
            Ok(())
        } else {
            Err(Error::Fenced(format!("lost the group's lease {} ({})", self.key, self.value)))
        }
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
                let _ = lost.send(Some(e.to_string()));
                return;
            }
        }
    }
}
