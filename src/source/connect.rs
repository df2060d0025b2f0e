//! How to reach Redis: the URL, credentials kept off the command line, and TLS (a private
//! CA, client certificates for mTLS). Every connection of the source (reader, commands,
//! acker, lease, probe) is made from one [`RedisOptions`] (built by `config`).
//!
//! `rediss://` uses rustls with the ring provider. The CA file replaces the system roots
//! (a private CA); a client certificate and key make the connection mutual TLS. A password
//! given apart from the URL (`EVENTIDE_REDIS_PASSWORD`, `--redis-password-file`) is added to
//! it here, so `rediss://user@host:port` never has to carry it. TLS errors are explained
//! ([`explain`]) and are not retried: a wrong CA does not heal by waiting.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError, RedisFuture, RedisResult, Value};

pub use crate::config::redact;
use crate::config::{Certs, RedisOptions};
use crate::error::{Error, Result};

/// A client for one or more connections to a single Redis (see [`Connector`] for Cluster).
pub fn client(opts: &RedisOptions) -> Result<Client> {
    install_crypto_provider();
    let mut info = opts.raw_url().into_connection_info().map_err(|e| bad_url(opts.raw_url(), e))?;
    if let Some(pw) = opts.password() {
        let settings = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(settings);
    }
    match opts.certs() {
        None => Client::open(info).map_err(|e| bad_url(opts.raw_url(), e)),
        Some(certs) => Client::build_with_tls(info, tls_certificates(certs)).map_err(bad_tls),
    }
}

fn tls_certificates(Certs { ca, client }: &Certs) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
        root_cert: ca.clone(),
    }
}

fn bad_tls(e: RedisError) -> Error {
    Error::Config(format!("Redis TLS files: {e} (PEM certificates and a PEM private key expected)"))
}

/// A connection to a single Redis or to a Redis Cluster (which routes each command by its
/// key's slot and follows `MOVED`/`ASK` and failovers). Commands of one shard touch keys of
/// one slot (`{k}` hash tags), so they always go to one node.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens [`Conn`]s: to the URL's server, or (`redis_cluster`) to the cluster its seed URLs
/// belong to.
#[derive(Clone)]
pub enum Connector {
    Single(Client),
    Cluster(RedisOptions),
}

impl Connector {
    pub fn new(opts: &RedisOptions) -> Result<Connector> {
        if !opts.cluster() {
            return Ok(Connector::Single(client(opts)?));
        }
        install_crypto_provider();
        cluster_builder(opts)?.build().map_err(|e| bad_url(opts.raw_url(), e))?;
        Ok(Connector::Cluster(opts.clone()))
    }

    /// A new connection. `response_timeout` bounds each reply (a blocking read needs more
    /// than its `BLOCK`).
    pub async fn connect(&self, connection_timeout: Duration, response_timeout: Duration) -> RedisResult<Conn> {
        match self {
            Connector::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connection_timeout))
                    .set_response_timeout(Some(response_timeout));
                Ok(Conn::Single(client.get_multiplexed_async_connection_with_config(&cfg).await?))
            }
            Connector::Cluster(opts) => {
                let builder = cluster_builder(opts)
                    .map_err(|e| RedisError::from((redis::ErrorKind::InvalidClientConfig, "cluster", e.to_string())))?;
                let client =
                    builder.connection_timeout(connection_timeout).response_timeout(response_timeout).build()?;
                // The cluster client's first connection (seeds, then the slot map) has no
                // deadline of its own (redis-rs#1953: it can wait forever); bound it here.
                let within = connection_timeout + response_timeout;
                match tokio::time::timeout(within, client.get_async_connection()).await {
                    Ok(conn) => Ok(Conn::Cluster(conn?)),
                    Err(_) => Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "cluster connection",
                        format!("no slot map from the seed nodes within {within:?}"),
                    ))),
                }
            }
        }
    }
}

/// The cluster client's settings: every seed URL, the password kept apart, TLS files.
fn cluster_builder(opts: &RedisOptions) -> Result<ClusterClientBuilder> {
    let seeds: Vec<&str> = opts.raw_url().split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    for s in &seeds {
        s.into_connection_info().map_err(|e| bad_url(s, e))?;
    }
    let mut b = ClusterClientBuilder::new(seeds);
    if let Some(pw) = opts.password() {
        b = b.password(pw);
    }
    if let Some(certs) = opts.certs() {
        b = b.certs(tls_certificates(certs));
    }
    Ok(b)
}

fn bad_url(url: &str, e: RedisError) -> Error {
    Error::Config(format!("redis_url {}: {e}; expected redis://host:port or rediss://host:port", redact(url)))
}

/// rustls needs a process-wide crypto provider: ring (already built for object_store).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// What a TLS failure means, in words an operator can act on; `None` when `e` is no TLS
/// failure.
pub fn explain(e: &RedisError) -> Option<String> {
    let mut text = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    let why = if text.contains("UnknownIssuer") {
        "the server's certificate is not signed by a trusted CA: give its CA with --redis-ca-file"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "the server's certificate does not name the host in the URL: connect by a name (or IP) its subjectAltName lists"
    } else if text.contains("CertificateRequired") || text.contains("HandshakeFailure") && text.contains("alert") {
        "the server requires a client certificate: give --redis-client-cert and --redis-client-key"
    } else if text.contains("BadCertificate") || text.contains("UnknownCA") || text.contains("DecryptError") {
        "the server refused our client certificate: is it signed by a CA the server trusts (tls-ca-cert-file)?"
    } else if text.contains("Expired") {
        "a certificate has expired"
    } else if text.contains("InvalidContentType") || text.contains("CorruptMessage") {
        "the server did not answer in TLS: is this a TLS port (rediss://) of a TLS-enabled Redis?"
    } else {
        return None;
    };
    Some(format!("TLS: {why} ({text})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsFiles;

    #[test]
    fn a_password_apart_from_the_url_is_used() {
        let c =
            RedisOptions::new("redis://eventide@127.0.0.1:6379", Some("s3cret".into()), &TlsFiles::default()).unwrap();
        let info = client(&c).unwrap().get_connection_info().clone();
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().username(), Some("eventide"));
    }
}
