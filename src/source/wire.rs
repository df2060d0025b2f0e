//! The reader's own connection to a single Redis, plain or TLS: a command goes out as the
//! redis crate packs it, and its reply is read into one buffer and cut into entries by
//! [`resp`], in the reader's task. That skips the crate's value tree (a parse
//! and an allocation per field) and its multiplexer task (a task hop per read). Redis
//! Cluster reads, and URLs this does not speak (unix sockets, `#insecure`), use the redis
//! crate's connection ([`Target::new`] says which).
//!
//! The handshake is `AUTH` (user and password, when given) and `SELECT` (a database other
//! than 0), in RESP2. TLS uses the same files as every other connection ([`Certs`]): the
//! CA bundle replaces the system roots, a client certificate makes it mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis::ConnectionAddr;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::{self, RespError};
use crate::config::{Certs, RedisOptions};

/// Why the connection failed; every one of these drops it (the reader reconnects).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("Redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis TLS settings: {0}")]
    Tls(String),
    #[error(transparent)]
    Reply(#[from] RespError),
}

impl WireError {
    /// The error reply's code (`NOGROUP`…), if Redis answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            WireError::Reply(e) => e.code(),
            _ => None,
        }
    }
}

/// Where and how to connect.
pub struct Target {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Target {
    /// `None` when the URL needs the redis crate's connection (a cluster, a unix socket,
    /// `#insecure`).
    pub fn new(opts: &RedisOptions) -> Result<Option<Target>, crate::error::Error> {
        if opts.cluster() {
            return Ok(None);
        }
        // The same URL parsing and password precedence as every other connection.
        let info = super::connect::client(opts)?.get_connection_info().clone();
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port, None),
            ConnectionAddr::TcpTls { host, port, insecure: false, .. } => {
                let certs = opts.certs().cloned().unwrap_or(Certs { ca: None, client: None });
                (host.clone(), *port, Some(Arc::new(tls_config(&certs).map_err(crate::error::Error::Config)?)))
            }
            _ => return Ok(None),
        };
        let settings = info.redis_settings();
        Ok(Some(Target {
            host,
            port,
            tls,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        }))
    }

    /// Connects and authenticates; `response_timeout` then bounds every reply.
    pub async fn connect(&self, connect_timeout: Duration, response_timeout: Duration) -> Result<Wire, WireError> {
        let io: Box<dyn Io> = tokio::time::timeout(connect_timeout, async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            Ok::<Box<dyn Io>, WireError>(match &self.tls {
                None => Box::new(tcp),
                Some(config) => {
                    let name = ServerName::try_from(self.host.clone()).map_err(|e| WireError::Tls(e.to_string()))?;
                    Box::new(tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?)
                }
            })
        })
        .await
        .map_err(|_| WireError::Timeout(connect_timeout))??;
        let mut wire = Wire {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            scan: resp::Scan::default(),
            timeout: response_timeout,
        };
        if let Some(pw) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            wire.command(auth.arg(pw)).await?;
        }
        if self.db != 0 {
            wire.command(redis::cmd("SELECT").arg(self.db)).await?;
        }
        Ok(wire)
    }
}

/// The client side of TLS: the CA bundle (else the system's roots), a client certificate.
fn tls_config(certs: &Certs) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &certs.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| format!("CA file: {e}"))?).map_err(|e| format!("CA file: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match &certs.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection: one command at a time, its reply read whole before the next.
pub struct Wire {
    io: Box<dyn Io>,
    /// Bytes read and not yet parsed (a reply's start, never two replies: one command at a
    /// time).
    buf: BytesMut,
    /// How far the reply in `buf` has been walked.
    scan: resp::Scan,
    timeout: Duration,
}

impl Wire {
    /// Sends a stream read (`XREAD`/`XREADGROUP`) and parses its reply.
    pub async fn xread(&mut self, cmd: &redis::Cmd) -> Result<Vec<super::reply::StreamEntries>, WireError> {
        Ok(resp::xread(self.request(cmd).await?)?)
    }

    /// Sends a command whose reply only matters if it is an error.
    pub async fn command(&mut self, cmd: &redis::Cmd) -> Result<(), WireError> {
        let frame = self.request(cmd).await?;
        resp::error_of(&frame).map_or(Ok(()), |e| Err(e.into()))
    }

    /// Writes `cmd` and reads its whole reply, within the response timeout.
    async fn request(&mut self, cmd: &redis::Cmd) -> Result<Bytes, WireError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.io.write_all(&cmd.get_packed_command()).await?;
            self.io.flush().await?;
            loop {
                if let Some(n) = self.scan.whole(&self.buf)? {
                    return Ok(self.take(n));
                }
                self.buf.reserve(64 * 1024);
                if self.io.read_buf(&mut self.buf).await? == 0 {
                    return Err(WireError::Closed);
                }
            }
        })
        .await
        .map_err(|_| WireError::Timeout(timeout))?
    }

    /// The whole reply, the first `n` bytes of the buffer. The entries cut from it keep its
    /// allocation alive until they are processed, so it is handed over as it is only when
    /// that allocation is about the reply's size (the usual case: replies smaller than the
    /// buffer's first 64 KiB, or grown to just fit). A reply in a much larger buffer (one
    /// grown by doubling for a few huge entries) is copied out at its exact size, and the
    /// buffer is kept for the next read, or let go when it dwarfs what replies need.
    fn take(&mut self, n: usize) -> Bytes {
        const SPARE: usize = 64 * 1024;
        let cap = self.buf.capacity();
        if cap <= n + n / 4 + SPARE {
            return self.buf.split_to(n).freeze();
        }
        let reply = Bytes::copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        if n < cap / 8 && self.buf.is_empty() {
            self.buf = BytesMut::with_capacity(SPARE);
        }
        reply
    }
}
