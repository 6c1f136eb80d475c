//! HTTPS without a proxy: the certificate and key of `http.tls_cert_file` /
//! `http.tls_key_file` (rustls with ring), re-read on SIGHUP, and ALPN offering `h2` then
//! `http/1.1`. Each accepted connection takes the configuration in force when it arrives:
//! a reload changes new connections only, and one that fails keeps the files in use.

use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN names, in our order of preference.
pub const H2: &[u8] = b"h2";
const HTTP1: &[u8] = b"http/1.1";

/// The files, and the configuration made from them.
pub struct Tls {
    cert_file: String,
    key_file: String,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads both files (or says which one is wrong and why).
    pub fn load(cert_file: &str, key_file: &str) -> anyhow::Result<Arc<Tls>> {
        let config = server_config(cert_file, key_file)?;
        Ok(Arc::new(Tls {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again; on failure the configuration in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self
                .config
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }

    /// Reloads on every SIGHUP until `stop` (a task of `tasks`).
    pub fn reload_on_hangup(
        self: &Arc<Self>,
        tasks: &tokio_util::task::TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let tls = Arc::clone(self);
        crate::tasks::on_hangup(tasks, stop, move || match tls.reload() {
            Ok(()) => tracing::info!(cert = %tls.cert_file, "SIGHUP: TLS certificate reloaded"),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "SIGHUP: TLS certificate not reloaded; the one in use stays")
            }
        });
    }
}

fn server_config(cert_file: &str, key_file: &str) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("http.tls_cert_file {cert_file}"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("http.tls_cert_file {cert_file}: not PEM certificates"))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "http.tls_cert_file {cert_file}: no certificate in it"
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("http.tls_key_file {key_file}: no PEM private key in it"))?;
    // ring, not aws-lc-rs (minutes of build and cmake on these machines); rustls 0.23.48
    // deprecates it for lacking post-quantum key exchange, which browsers fall back from.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context(
            "http.tls_cert_file and http.tls_key_file do not make a certificate and its key",
        )?;
    config.alpn_protocols = vec![H2.to_vec(), HTTP1.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key from openssl (as an operator makes them).
    fn certificate(dir: &std::path::Path, name: &str) -> (String, String) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }

    #[test]
    fn a_certificate_loads_offers_h2_and_a_failed_reload_keeps_the_one_in_use() {
        let dir = std::env::temp_dir().join(format!("storepulse-tls-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let (cert, key) = certificate(&dir, "a");
        let tls = Tls::load(&cert, &key).expect("loads");
        let alpn = |tls: &Tls| tls.config.read().expect("lock").alpn_protocols.clone();
        assert_eq!(alpn(&tls), [b"h2".to_vec(), b"http/1.1".to_vec()]);
        // Renewed in place: the reload takes it.
        let before = Arc::clone(&tls.config.read().expect("lock"));
        let (renewed_cert, renewed_key) = certificate(&dir, "b");
        std::fs::copy(&renewed_cert, &cert).expect("copied");
        std::fs::copy(&renewed_key, &key).expect("copied");
        tls.reload().expect("reloads");
        assert!(
            !Arc::ptr_eq(&before, &tls.config.read().expect("lock")),
            "a new configuration"
        );
        // A broken file: the reload fails, saying which, and the pair in use stays.
        let in_use = Arc::clone(&tls.config.read().expect("lock"));
        std::fs::write(&key, "not a key").expect("written");
        let error = format!("{:#}", tls.reload().expect_err("refused"));
        assert!(error.contains("http.tls_key_file"), "{error}");
        assert!(
            Arc::ptr_eq(&in_use, &tls.config.read().expect("lock")),
            "kept"
        );
        // A key of another certificate.
        let (_, other_key) = certificate(&dir, "c");
        let error = format!(
            "{:#}",
            Tls::load(&renewed_cert, &other_key).err().expect("refused")
        );
        assert!(
            error.contains("do not make a certificate and its key"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
