//! TLS for the TCP listener (rustls through tonic): the server's certificate
//! chain and key, and optionally a CA whose certificates clients must show
//! (mutual TLS). Files are PEM; each is read and checked here so that a wrong
//! file is named at start instead of failing the first handshake.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read {what}: {source}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{}: not {what}: expected a PEM file with a `-----BEGIN {block}` block", path.display())]
    NotPem {
        path: PathBuf,
        what: &'static str,
        block: &'static str,
    },
    #[error("{} and {}: the certificate and key do not make a TLS server identity: {reason}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Where the TLS material lives (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads and checks the files; the result is ready for tonic.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read_pem(&self.cert, "a certificate", "CERTIFICATE")?;
        let key = read_pem(&self.key, "a private key", "PRIVATE KEY")?;
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            let ca = read_pem(ca, "a CA certificate", "CERTIFICATE")?;
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        // Building a server with it parses the key and chain: do it now.
        tonic::transport::Server::builder()
            .tls_config(cfg.clone())
            .map_err(|e| TlsError::Identity {
                cert: self.cert.clone(),
                key: self.key.clone(),
                reason: super::root_cause(&e),
            })?;
        Ok(cfg)
    }
}

fn read_pem(path: &Path, what: &'static str, block: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        what,
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    // `-----BEGIN EC PRIVATE KEY-----` and the like count as a PRIVATE KEY.
    let has_block = text.split("-----BEGIN ").skip(1).any(|rest| {
        rest.split("-----")
            .next()
            .is_some_and(|b| b.ends_with(block))
    });
    if !has_block {
        return Err(TlsError::NotPem {
            path: path.to_path_buf(),
            what,
            block,
        });
    }
    Ok(bytes)
}
