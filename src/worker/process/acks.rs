//! After a checkpoint: the entries it holds are acknowledged, through the acker task (group
//! mode; in `noack` mode the checkpoint's writer moved the group, [`super::commit`]).

use super::Processor;
use crate::entry::EntryId;
use crate::error::{Error, Result};

impl Processor {
    /// After a checkpoint (group mode): hands the entries it holds to the acker.
    pub(super) async fn ack(&mut self, taken: Vec<(usize, Vec<EntryId>)>) -> Result<()> {
        for (stream, ids) in taken {
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
        Ok(())
    }

    /// Waits for every queued acknowledgement; call last.
    pub async fn finish_acks(&mut self) -> Result<()> {
        if let Some(a) = self.acker.take() {
            self.stats.acked += a.finish().await?;
        }
        Ok(())
    }
}
