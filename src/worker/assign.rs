//! Which shards this worker runs. Workers of a group announce themselves in one sorted set
//! (`eventide:workers:{<group>}`: member = consumer name, score = the heartbeat's expiry on
//! Redis's clock), every third of `lease_ttl`; a worker that stops cleanly leaves it, one
//! that dies drops out when its heartbeat expires. Each worker then computes the same
//! assignment from the same member list: rendezvous hashing (shard `k` goes to the member
//! with the highest hash of (member, `k`), so a worker joining or leaving moves only its
//! own share of shards), or the static `k % workers == index` of a StatefulSet. A group of
//! one shard keeps active/standby: every worker waits for the shard's lease.
//!
//! Two workers may briefly disagree (one has seen a new member, the other not yet): the
//! shard's lease decides, so a shard is never run twice at once, and the views converge at
//! the next heartbeat.

use std::time::Duration;

use crate::config::Assignment;
use crate::error::Result;
use crate::names::ShardId;
use crate::source::commands::Commands;

/// Adds or refreshes the member (expiry on Redis's clock), drops expired ones, returns the
/// live members. The set expires when every worker is gone.
const BEAT: &str = r#"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return redis.call('ZRANGE', KEYS[1], 0, -1)"#;

/// The key of `group`'s member set.
pub fn members_key(group: &str) -> String {
    format!("eventide:workers:{{{group}}}")
}

/// This worker's heartbeat in its group.
pub struct Membership {
    key: String,
    me: String,
    ttl: Duration,
}

impl Membership {
    pub fn new(group: &str, consumer: &str, ttl: Duration) -> Self {
        Membership { key: members_key(group), me: consumer.to_string(), ttl }
    }

    /// Announces this worker and returns the live members (this one included), sorted.
    pub async fn beat(&self, cmds: &mut Commands) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BEAT).arg(1).arg(&self.key).arg(&self.me).arg(self.ttl.as_millis() as u64);
        let mut members: Vec<String> = cmds.query(&cmd).await?;
        if !members.contains(&self.me) {
            members.push(self.me.clone());
        }
        members.sort();
        Ok(members)
    }

    /// Leaves the group at a clean stop (the others take this worker's shards at once).
    pub async fn leave(&self, cmds: &mut Commands) -> Result<()> {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&self.key).arg(&self.me);
        cmds.query::<(), _>(&cmd).await
    }
}

/// The shards of `count` that `me` runs among `members`. A single shard is every worker's:
/// they all wait for its lease, so the others are hot standbys of the one reading.
pub fn assign(how: Assignment, count: u32, members: &[String], me: &str) -> Vec<ShardId> {
    ShardId::all(count)
        .filter(|s| match how {
            Assignment::Static { index, workers } => s.index % workers == index,
            Assignment::Rendezvous => count <= 1 || owner(members, s.index) == Some(me),
        })
        .collect()
}

/// The member with the highest hash of (member, shard).
fn owner(members: &[String], shard: u32) -> Option<&str> {
    members.iter().max_by_key(|m| weight(m, shard)).map(String::as_str)
}

fn weight(member: &str, shard: u32) -> u64 {
    let mut key = Vec::with_capacity(member.len() + 5);
    key.extend_from_slice(member.as_bytes());
    key.push(0);
    key.extend_from_slice(&shard.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn every_shard_has_one_owner_and_a_new_worker_takes_only_its_share() {
        let (count, three, four) = (64, names(3), names(4));
        let owned = |members: &[String]| -> Vec<Vec<u32>> {
            members
                .iter()
                .map(|m| assign(Assignment::Rendezvous, count, members, m).iter().map(|s| s.index).collect())
                .collect()
        };
        let before = owned(&three);
        let mut all: Vec<u32> = before.concat();
        all.sort();
        assert_eq!(all, (0..count).collect::<Vec<_>>(), "each shard exactly once");
        assert!(before.iter().all(|o| o.len() >= 10), "spread: {before:?}");
        let after = owned(&four);
        // Shards only move to the new worker, never between the old ones.
        for (b, a) in before.iter().zip(&after) {
            assert!(a.iter().all(|s| b.contains(s)), "{b:?} -> {a:?}");
        }
        assert_eq!(after[3].len(), (0..3).map(|i| before[i].len() - after[i].len()).sum::<usize>());
    }

    #[test]
    fn static_assignment_is_the_index_modulo_the_workers() {
        let mine = assign(Assignment::Static { index: 1, workers: 3 }, 8, &[], "x");
        assert_eq!(mine.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 4, 7]);
    }
}
