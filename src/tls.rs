//! TLS with rustls (ring provider): the data listener's server side (with
//! certificate files reloaded when they change, ALPN, optional client
//! certificates), and the client side towards nodes and webhooks (system
//! roots or a CA bundle, SNI from the address, optional client certificate
//! for mTLS).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::FieldError;

/// `[listener.tls]`: terminate TLS on the data listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[pools.tls]`: how to speak TLS to a pool's `https://` nodes (and to
/// webhooks: system roots).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle to trust instead of the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mTLS (with `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM client private key for mTLS (with `cert`).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

fn certified_key(tls: &ServerTls) -> Result<CertifiedKey, String> {
    let certs = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| format!("{} and {}: {e}", tls.cert.display(), tls.key.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The listener's certificate, swapped when its files change; handshakes
/// in progress and open connections keep the one they started with.
#[derive(Debug)]
pub struct ReloadingCert {
    tls: ServerTls,
    current: ArcSwap<CertifiedKey>,
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    fn load(tls: &ServerTls) -> Result<ReloadingCert, String> {
        let key = certified_key(tls)?;
        Ok(ReloadingCert {
            current: ArcSwap::from_pointee(key),
            stamps: Mutex::new((modified(&tls.cert), modified(&tls.key))),
            tls: tls.clone(),
        })
    }

    /// Load the files again if they changed; a bad pair is refused and the
    /// certificate in use stays. Returns true when a new one took over.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = (modified(&self.tls.cert), modified(&self.tls.key));
        {
            let seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == stamps {
                return false;
            }
        }
        match certified_key(&self.tls) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
                tracing::info!(cert = %self.tls.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Often a half-written pair (cert renewed, key not yet):
                // keep serving the old one and look again next time.
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the current one");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// How often certificate files are looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// A server config for `tls` with ALPN `h2` (when `http2`) and `http/1.1`,
/// and the certificate holder to poll for reloads.
pub fn server_config(
    tls: &ServerTls,
    http2: bool,
) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), String> {
    let cert = Arc::new(ReloadingCert::load(tls)?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(config), cert))
}

/// A client config for nodes or webhooks: `tls.ca` or the system roots,
/// and the client certificate when given.
pub fn client_config(tls: &ClientTls) -> Result<Arc<ClientConfig>, String> {
    let roots = match &tls.ca {
        Some(ca) => roots_from(ca)?,
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A connector for `http://` and `https://` URIs (TLS with `config`).
pub type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A connector that speaks plain HTTP to `http://` and TLS with `config`
/// (ALPN `h2` and `http/1.1`, SNI from the URI's host) to `https://`.
pub fn https_connector(config: Arc<ClientConfig>, connect_timeout: Duration) -> HttpsConnector {
    connector(config, connect_timeout, true)
}

/// Like [`https_connector`], offering only HTTP/1.1 in ALPN: for
/// connections the gateway drives as HTTP/1.1 itself.
pub fn https_connector_http1(
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> HttpsConnector {
    connector(config, connect_timeout, false)
}

fn connector(config: Arc<ClientConfig>, connect_timeout: Duration, h2: bool) -> HttpsConnector {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1();
    if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

/// The client config for pools without `[pools.tls]` and for webhooks:
/// the system roots, built once.
pub fn default_client_config() -> Arc<ClientConfig> {
    static DEFAULT: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    Arc::clone(DEFAULT.get_or_init(|| {
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports TLS 1.2 and 1.3")
                .with_root_certificates(system_roots())
                .with_no_client_auth(),
        )
    }))
}

/// The system's trusted roots (empty, with a warning, when none load).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(%error, "a system root certificate could not be loaded");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates found; https:// needs a CA bundle (tls.ca)");
    }
    roots
}

impl ServerTls {
    /// Problems with this section (`at`: its path): the files must load.
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(e) = certified_key(self) {
            errors.push(FieldError {
                path: format!("{at}.cert"),
                message: e,
            });
        }
        if let Some(ca) = &self.client_ca {
            if let Err(e) = roots_from(ca) {
                errors.push(FieldError {
                    path: format!("{at}.client_ca"),
                    message: e,
                });
            }
        }
        errors
    }
}

impl ClientTls {
    /// Problems with this section (`at`: its path).
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.cert.is_some() != self.key.is_some() {
            errors.push(FieldError {
                path: format!("{at}.key"),
                message: "cert and key go together (mTLS)".into(),
            });
        } else if let Err(e) = client_config(self) {
            errors.push(FieldError {
                path: at.to_string(),
                message: e,
            });
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> ServerTls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = ServerTls {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            client_ca: None,
        };
        std::fs::write(&tls.cert, cert.cert.pem()).unwrap();
        std::fs::write(&tls.key, cert.signing_key.serialize_pem()).unwrap();
        tls
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ig-tls-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_and_reloads_only_a_good_pair() {
        let dir = temp_dir();
        let tls = write_pair(&dir, "a");
        let (_, cert) = server_config(&tls, true).unwrap();
        let first = cert.current.load_full();
        assert!(!cert.reload_if_changed(), "nothing changed");
        // A broken key: refused, the old certificate stays.
        std::fs::write(&tls.key, "not a key").unwrap();
        assert!(!cert.reload_if_changed());
        assert!(Arc::ptr_eq(&first, &cert.current.load_full()));
        // A new good pair takes over.
        let fresh = write_pair(&dir, "b");
        std::fs::copy(&fresh.cert, &tls.cert).unwrap();
        std::fs::copy(&fresh.key, &tls.key).unwrap();
        // mtime granularity: make sure the stamps differ.
        let later = SystemTime::now() + Duration::from_secs(5);
        let file = std::fs::File::options()
            .write(true)
            .open(&tls.cert)
            .unwrap();
        file.set_modified(later).unwrap();
        assert!(cert.reload_if_changed());
        assert!(!Arc::ptr_eq(&first, &cert.current.load_full()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn validation_names_the_field() {
        let dir = temp_dir();
        let tls = ServerTls {
            cert: dir.join("missing.crt"),
            key: dir.join("missing.key"),
            client_ca: None,
        };
        let errors = tls.validate("listener.tls");
        assert_eq!(errors[0].path, "listener.tls.cert");
        let client = ClientTls {
            cert: Some(dir.join("c.crt")),
            ..ClientTls::default()
        };
        assert_eq!(client.validate("pools[0].tls")[0].path, "pools[0].tls.key");
        assert!(ClientTls::default().validate("pools[0].tls").is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
