//! TLS material read from PEM files: certificate chains, private keys, trusted CAs, and the
//! crypto provider every Vigil TLS config names (ring: the AWS SDK links aws-lc-rs as well, and
//! rustls will not guess between two).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The provider of every TLS config Vigil builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: the leaf first).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key ({e})", path.display()))
}

/// The CAs of a PEM file, as trust anchors.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate ({e})", path.display()))?;
    }
    Ok(store)
}

/// What [`ClientFiles::stamp`] compares: each file's inode, change time (seconds,
/// nanoseconds) and size.
pub type Stamp = Vec<Option<(u64, i64, i64, u64)>>;

/// A client's TLS files: the CA it trusts (else the system's roots), and its own certificate
/// and key for servers that ask for one (mTLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientFiles {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// The files' inodes, change times and sizes: what changes when one is replaced (also by
    /// `cp -p` or `rsync -a`, which keep the modification time).
    pub fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.ino(), m.ctime(), m.ctime_nsec(), m.len()))
            })
            .collect()
    }

    /// A client config from the files as they are now.
    pub fn config(&self) -> Result<rustls::ClientConfig, String> {
        let roots = match &self.ca_file {
            Some(p) => roots(p)?,
            None => {
                let mut store = RootCertStore::empty();
                let found = rustls_native_roots();
                for c in found {
                    let _ = store.add(c);
                }
                store
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        // (ALPN is set by the connector: http/1.1.)
        let cfg = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(certs(c)?, key(k)?)
                .map_err(|e| format!("{} and {}: {e}", c.display(), k.display()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("cert_file and key_file go together".into()),
        };
        Ok(cfg)
    }
}

/// The system's trusted roots (those that can be read).
fn rustls_native_roots() -> Vec<CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}
