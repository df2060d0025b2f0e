//! After a checkpoint: the entries it holds are acknowledged (XACK through the acker task,
//! or in `noack` mode the group's position moved).

use super::Processor;
use crate::error::{Error, Result};
use crate::source::group;

impl Processor {
    /// After a checkpoint: hands every entry read so far to the acker (or, `noack`, moves the
    /// group); returns how many entries.
    pub(super) async fn ack_durable(&mut self) -> Result<u64> {
        let mut n = 0;
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        // Called right after a checkpoint: everything read so far is in it.
        let taken = self.acks.take_all();
        for id in taken.iter().flat_map(|(_, ids)| ids) {
            let ms = now_ms.saturating_sub(id.ms);
            self.stats.durable_latency.record(ms);
            self.durable_exact.record(ms);
        }
        if let Some(positions) = self.noack.as_mut() {
            // No pending list: move the group's position to what the checkpoint holds.
            for (stream, ids) in taken {
                let Some(&max) = ids.iter().max() else { continue };
                let (at, read) = &mut positions[stream];
                *at = (*at).max(max);
                *read = read.map(|r| r + ids.len() as u64);
                n += ids.len() as u64;
                let (name, g) = (&self.source.streams[stream], &self.source.group);
                *read = self.fence.guard(group::set_position(&mut self.cmds, name, g, *at, *read)).await?;
            }
            self.stats.acked += n;
            return Ok(n);
        }
        for (stream, ids) in taken {
            n += ids.len() as u64;
            let sent = match self.acker.as_mut() {
                Some(a) => a.send(stream, ids).await,
                None => false,
            };
            if !sent {
                // The acker stopped: its error says why.
                return match self.acker.take() {
                    Some(a) => a.finish().await.and(Err(Error::Internal("the acker stopped".into()))),
                    None => Err(Error::Internal("the acker stopped".into())),
                };
            }
        }
        Ok(n)
    }

    /// Waits for every queued acknowledgement; call last.
    pub async fn finish_acks(&mut self) -> Result<()> {
        if let Some(a) = self.acker.take() {
            self.stats.acked += a.finish().await?;
        }
        Ok(())
    }
}
