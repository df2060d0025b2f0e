//! The command connection: short, non-blocking commands with reconnect and bounded retry.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, RetryMethod};

use super::backoff;
use super::connect::{Conn, Connector};
use crate::error::{Error, Result};

/// Something that can be sent on a connection: a command or a pipeline.
pub trait Request {
    fn send<T: FromRedisValue>(&self, c: &mut Conn) -> impl Future<Output = RedisResult<T>>;
}

impl Request for Cmd {
    fn send<T: FromRedisValue>(&self, c: &mut Conn) -> impl Future<Output = RedisResult<T>> {
        self.query_async(c)
    }
}

impl Request for Pipeline {
    fn send<T: FromRedisValue>(&self, c: &mut Conn) -> impl Future<Output = RedisResult<T>> {
        self.query_async(c)
    }
}

/// How long connecting (to a server, or discovering a cluster's slots) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily (re)connected multiplexed connection (to a server, or to a cluster).
pub struct Commands {
    client: Connector,
    conn: Option<Conn>,
    retry_timeout: Duration,
}

impl Commands {
    pub fn new(redis: &crate::config::RedisOptions, retry_timeout: Duration) -> Result<Self> {
        Ok(Commands { client: Connector::new(redis)?, conn: None, retry_timeout })
    }

    /// Whether a connection is up (a caller bounding a command by less than [`CONNECT_TIMEOUT`]
    /// must allow for connecting first, or a cancelled connect starts over every time).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Drops the connection: the next command connects anew (after a caller's timeout cut a
    /// command short, the connection may be left waiting on a server that is gone).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn connection(&mut self) -> RedisResult<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(self.client.connect(CONNECT_TIMEOUT, Duration::from_secs(30)).await?);
        }
        // Just set above when it was missing.
        Ok(self.conn.as_mut().expect("connection present"))
    }

    /// Sends `req`, reconnecting and retrying transient failures for up to the retry timeout.
    /// Server errors that retrying cannot fix are returned at once.
    pub async fn query<T: FromRedisValue, R: Request>(&mut self, req: &R) -> Result<T> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let res = match self.connection().await {
                Ok(c) => req.send(c).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(v) => return Ok(v),
                // A certificate problem does not heal by retrying.
                Err(e) if let Some(why) = super::connect::explain(&e) => return Err(Error::Config(why)),
                Err(e) if matches!(e.retry_method(), RetryMethod::NoRetry) || start.elapsed() >= self.retry_timeout => {
                    return Err(e.into());
                }
                Err(e) => {
                    if matches!(e.retry_method(), RetryMethod::Reconnect | RetryMethod::ReconnectFromInitialConnections)
                        || e.is_io_error()
                        || e.is_timeout()
                    {
                        self.conn = None;
                    }
                    tracing::warn!(error = %e, attempt, "Redis command failed; retrying.");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}
