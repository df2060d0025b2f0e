//! How to reach Redis: the URL, credentials kept off the command line, and TLS (a private
//! CA, client certificates for mTLS). Every connection of the source (reader, commands,
//! acker, lease, probe) is made from one [`RedisConnect`].
//!
//! `rediss://` uses rustls with the ring provider. The CA file replaces the system roots
//! (a private CA); a client certificate and key make the connection mutual TLS. A password
//! given apart from the URL (`EVENTIDE_REDIS_PASSWORD`, `--redis-password-file`) is added to
//! it here, so `rediss://user@host:port` never has to carry it. TLS errors are explained
//! ([`explain`]) and are not retried: a wrong CA does not heal by waiting.

use std::path::{Path, PathBuf};

use redis::{Client, IntoConnectionInfo, RedisError};

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
pub struct RedisConnect {
    url: String,
    password: Option<String>,
    certs: Option<Certs>,
}

/// PEM bytes: the CA bundle, and the client certificate with its key.
#[derive(Clone)]
struct Certs {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnect")
            .field("url", &redact(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_files", &self.certs.is_some())
            .finish()
    }
}

impl RedisConnect {
    /// A plain URL (its password, if any, in it).
    pub fn url(url: &str) -> RedisConnect {
        RedisConnect { url: url.to_string(), password: None, certs: None }
    }

    /// The URL, a password kept apart from it, and TLS files (read now: a missing file is an
    /// error naming the setting).
    pub fn new(url: &str, password: Option<String>, tls: &TlsFiles) -> Result<RedisConnect> {
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
        let c = RedisConnect { url: url.to_string(), password: password.filter(|p| !p.is_empty()), certs };
        c.client()?; // the URL and the certificates parse
        Ok(c)
    }

    /// A client for one or more connections.
    pub fn client(&self) -> Result<Client> {
        install_crypto_provider();
        let mut info = self.url.as_str().into_connection_info().map_err(|e| bad_url(&self.url, e))?;
        if let Some(pw) = &self.password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        match &self.certs {
            None => Client::open(info).map_err(|e| bad_url(&self.url, e)),
            Some(Certs { ca, client }) => {
                let certs = redis::TlsCertificates {
                    client_tls: client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    root_cert: ca.clone(),
                };
                Client::build_with_tls(info, certs).map_err(|e| {
                    Error::Config(format!("Redis TLS files: {e} (PEM certificates and a PEM private key expected)"))
                })
            }
        }
    }

    /// The URL with any password hidden (for logs).
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
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

/// Hides a password in a Redis URL.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
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

    #[test]
    fn a_password_apart_from_the_url_is_used_and_never_shown() {
        let c =
            RedisConnect::new("redis://eventide@127.0.0.1:6379", Some("s3cret".into()), &TlsFiles::default()).unwrap();
        let info = c.client().unwrap().get_connection_info().clone();
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().username(), Some("eventide"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:***@h:1");
    }

    #[test]
    fn tls_files_need_a_tls_url_and_come_in_pairs() {
        let tls = TlsFiles { ca: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = RedisConnect::new("redis://127.0.0.1:6379", None, &tls).unwrap_err().to_string();
        assert!(e.contains("rediss://"), "{e}");
        let e = RedisConnect::new("rediss://127.0.0.1:6379", None, &tls).unwrap_err().to_string();
        assert!(e.contains("redis_ca_file: cannot read /nonexistent/ca.pem"), "{e}");
        let half = TlsFiles { client_cert: Some("/x".into()), ..Default::default() };
        let e = RedisConnect::new("rediss://127.0.0.1:6379", None, &half).unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
    }
}
