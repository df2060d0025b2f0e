//! How to reach Redis, as configured: the URL, a password kept apart from it, and TLS files
//! (read when the options are built: a missing file is an error naming its setting). The
//! source makes its connections from a [`RedisOptions`] (`source::connect`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Files for TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CA(s) that signed the server's certificate (else the system roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Everything needed to open a connection; `Debug` never shows the password.
#[derive(Clone)]
pub struct RedisOptions {
    /// One URL, or (a cluster) seed URLs separated by commas.
    url: String,
    password: Option<String>,
    certs: Option<Certs>,
    cluster: bool,
}

/// PEM bytes: the CA bundle, and the client certificate with its key.
#[derive(Clone)]
pub struct Certs {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_files", &self.certs.is_some())
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl RedisOptions {
    /// A plain URL (its password, if any, in it).
    pub fn url(url: &str) -> RedisOptions {
        RedisOptions { url: url.to_string(), password: None, certs: None, cluster: false }
    }

    /// The URL, a password kept apart from it, and TLS files (read now).
    pub fn new(url: &str, password: Option<String>, tls: &TlsFiles) -> Result<RedisOptions> {
        let read = |key: &str, p: &Path| {
            std::fs::read(p).map_err(|e| Error::Config(format!("{key}: cannot read {}: {e}", p.display())))
        };
        let any_tls = tls.ca.is_some() || tls.client_cert.is_some() || tls.client_key.is_some();
        if any_tls && !url.starts_with("rediss://") {
            return Err(Error::Config(format!(
                "redis_ca_file / redis_client_cert / redis_client_key need a TLS URL: use rediss:// instead of {}",
                redact(url)
            )));
        }
        let client = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((read("redis_client_cert", c)?, read("redis_client_key", k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "redis_client_cert and redis_client_key go together (mutual TLS needs both)".into(),
                ));
            }
        };
        let ca = tls.ca.as_deref().map(|p| read("redis_ca_file", p)).transpose()?;
        let certs = (ca.is_some() || client.is_some()).then_some(Certs { ca, client });
        Ok(RedisOptions { url: url.to_string(), password: password.filter(|p| !p.is_empty()), certs, cluster: false })
    }

    /// The URL's server is a node of a Redis Cluster (`url` may list several seed nodes,
    /// separated by commas).
    pub fn in_cluster(mut self, cluster: bool) -> RedisOptions {
        self.cluster = cluster;
        self
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// The URL as given (it may hold a password: log [`RedisOptions::redacted`] instead).
    pub fn raw_url(&self) -> &str {
        &self.url
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn certs(&self) -> Option<&Certs> {
        self.certs.as_ref()
    }

    /// The URL with any password hidden (for logs).
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

/// Hides a password in a Redis URL (or in each of a comma-separated list of them).
pub fn redact(url: &str) -> String {
    let one = |url: &str| match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_a_tls_url_and_come_in_pairs() {
        let tls = TlsFiles { ca: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = RedisOptions::new("redis://127.0.0.1:6379", None, &tls).unwrap_err().to_string();
        assert!(e.contains("rediss://"), "{e}");
        let e = RedisOptions::new("rediss://127.0.0.1:6379", None, &tls).unwrap_err().to_string();
        assert!(e.contains("redis_ca_file: cannot read /nonexistent/ca.pem"), "{e}");
        let half = TlsFiles { client_cert: Some("/x".into()), ..Default::default() };
        let e = RedisOptions::new("rediss://127.0.0.1:6379", None, &half).unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let c =
            RedisOptions::new("redis://eventide@127.0.0.1:6379", Some("s3cret".into()), &TlsFiles::default()).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:***@h:1");
    }
}
