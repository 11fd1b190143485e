//! TLS for the listeners: rustls with TLS 1.2 and 1.3 only, the ring
//! provider, and a self-signed certificate made on first start when the
//! operator has not configured one.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tern_core::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// Installs the one crypto provider Tern uses. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the configured certificate, or generates the self-signed default.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let (cert_path, key_path) = (config.cert_path(), config.key_path());
    if config.tls_is_generated() && !cert_path.exists() {
        generate_self_signed(&config.hostname, &cert_path, &key_path)?;
        tracing::warn!(cert = %cert_path.display(), "generated a self-signed certificate; configure [tls] cert and key for production");
    }
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let mut sc = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    sc.alpn_protocols.clear();
    Ok(Arc::new(sc))
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = fs::File::open(path).map_err(|e| file_error(path, e))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = fs::File::open(path).map_err(|e| file_error(path, e))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| file_error(path, e))?
        .ok_or_else(|| file_error(path, "no PEM private key found"))
}

fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = cert.parent() {
        fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    if let Some(dir) = key.parent() {
        fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    write_private(key, ck.key_pair.serialize_pem().as_bytes())?;
    fs::write(cert, ck.cert.pem()).map_err(|e| file_error(cert, e))?;
    Ok(())
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    f.write_all(data).map_err(|e| file_error(path, e))
}
