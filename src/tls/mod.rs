//! Certificates, SPKI pins and the two rustls server configurations.
//!
//! Architecture invariant: a TLS server config can only be built from a
//! [`PinnedCertificate`], and only [`load_pinned`] constructs one — after checking that the
//! leaf's public key is in the policy's pin set and that the private key belongs to it.
#![forbid(unsafe_code)]

use base64::Engine;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// A certificate chain and key whose leaf public key is in the pin set and matches the key.
/// Only [`load_pinned`] builds one.
#[derive(Clone)]
pub struct PinnedCertificate {
    certified: Arc<CertifiedKey>,
    pin: String,
}

impl std::fmt::Debug for PinnedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCertificate")
            .field("pin", &self.pin)
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

impl PinnedCertificate {
    /// The served leaf's pin (`sha256/BASE64`).
    pub fn pin(&self) -> &str {
        &self.pin
    }
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

/// The ring provider: the daemon's only crypto provider (no OpenSSL anywhere).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// `sha256/BASE64` of a DER SubjectPublicKeyInfo.
pub fn pin_of_spki(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The SPKI pin of a DER certificate.
pub fn pin_of_certificate(cert_der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    Ok(pin_of_spki(cert.tbs_certificate.subject_pki.raw))
}

/// Read a PEM chain (leaf first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e:?}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(chain)
}

/// Read a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    // The error text of the PEM parser never contains key material.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| format!("{}: no valid PEM private key found", path.display()))
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinFailure {
    /// The leaf's key is not one of the pins.
    NotPinned {
        actual: String,
        allowed: Vec<String>,
    },
    /// The private key does not belong to the leaf certificate.
    KeyMismatch,
    /// A file could not be read or parsed.
    Unreadable(String),
}

impl std::fmt::Display for PinFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinFailure::NotPinned { actual, allowed } => write!(
                f,
                "served certificate key {actual} is not pinned; allowed pins: {}",
                allowed.join(", ")
            ),
            PinFailure::KeyMismatch => {
                f.write_str("the private key does not match the certificate's public key")
            }
            PinFailure::Unreadable(e) => f.write_str(e),
        }
    }
}

/// Load a chain and key, check the pin and the key match, and return the proof.
pub fn load_pinned(
    cert_path: &Path,
    key_path: &Path,
    pins: &[String],
) -> Result<PinnedCertificate, PinFailure> {
    let chain = read_chain(cert_path).map_err(PinFailure::Unreadable)?;
    let key = read_key(key_path).map_err(PinFailure::Unreadable)?;
    pin_chain(chain, key, pins)
}

/// The pin check itself, on parsed inputs.
pub fn pin_chain(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pins: &[String],
) -> Result<PinnedCertificate, PinFailure> {
    let leaf = chain
        .first()
        .ok_or_else(|| PinFailure::Unreadable("empty certificate chain".into()))?;
    let actual = pin_of_certificate(leaf).map_err(PinFailure::Unreadable)?;
    if !pins.iter().any(|p| p == &actual) {
        return Err(PinFailure::NotPinned {
            actual,
            allowed: pins.to_vec(),
        });
    }
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| PinFailure::Unreadable("unsupported private key type".into()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| PinFailure::KeyMismatch)?;
    Ok(PinnedCertificate {
        certified: Arc::new(certified),
        pin: actual,
    })
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Visitor side: the policy's minimum version, AEAD suites only (rustls offers nothing else).
pub fn visitor_server_config(
    cert: &PinnedCertificate,
    min_version: &str,
    session_resumption: bool,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions)
        .map_err(|e| format!("visitor TLS config: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(cert.certified.clone())));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One TLS 1.3 resumption ticket per handshake (rustls sends two by default): a browser
    // uses a ticket once, and every resumed connection brings a fresh one.
    cfg.send_tls13_tickets = 1;
    if !session_resumption {
        // The policy turned resumption off: no tickets, no session cache.
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    Ok(Arc::new(cfg))
}

/// Operator side: TLS 1.3 with `TLS13_AES_256_GCM_SHA384` and nothing else.
pub fn operator_server_config(cert: &PinnedCertificate) -> Result<Arc<ServerConfig>, String> {
    let provider = CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384],
        ..provider()
    };
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("operator TLS config: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(cert.certified.clone())));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption tickets: every operator connection authenticates the server afresh.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client config that accepts exactly the server keys whose pins are given (used by
/// `palisade op` and the tests; no CA is involved, the pin is the trust anchor).
pub fn pinned_client_config(pins: Vec<String>) -> Arc<rustls::ClientConfig> {
    pinned_client_config_with(pins, provider(), &[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by ring")
}

/// [`pinned_client_config`] with a chosen provider (cipher suites) and protocol versions.
pub fn pinned_client_config_with(
    pins: Vec<String>,
    provider: CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(provider);
    let verifier = Arc::new(PinVerifier {
        pins,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct PinVerifier {
    pins: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let pin = pin_of_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.pins.contains(&pin) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Run one TLS handshake in memory between a server and a client config.
fn handshake_in_memory(
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut c = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
    for _ in 0..16 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).map_err(|e| e.to_string())?;
        s.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
        let server_err = s.process_new_packets().err();
        let mut back = Vec::new();
        s.write_tls(&mut back).map_err(|e| e.to_string())?;
        c.read_tls(&mut &back[..]).map_err(|e| e.to_string())?;
        c.process_new_packets().map_err(|e| e.to_string())?;
        if let Some(e) = server_err {
            return Err(e.to_string());
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            let suite = c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            return Ok(suite);
        }
    }
    Err("handshake did not complete".into())
}

/// Prove, by real handshakes in memory, that the operator config accepts TLS 1.3 with
/// AES-256-GCM and refuses TLS 1.2 and every other TLS 1.3 suite.
pub fn operator_channel_proof(cert: &PinnedCertificate) -> Result<String, String> {
    use rustls::crypto::ring::cipher_suite as cs;
    let server = operator_server_config(cert)?;
    let client = |suites: Vec<rustls::SupportedCipherSuite>,
                  versions: &[&'static rustls::SupportedProtocolVersion]| {
        pinned_client_config_with(
            vec![cert.pin().to_string()],
            CryptoProvider {
                cipher_suites: suites,
                ..provider()
            },
            versions,
        )
        .map_err(|e| e.to_string())
    };
    let ok = handshake_in_memory(
        server.clone(),
        client(
            vec![cs::TLS13_AES_256_GCM_SHA384],
            &[&rustls::version::TLS13],
        )?,
    )
    .map_err(|e| format!("TLS 1.3 AES-256-GCM was refused: {e}"))?;
    if handshake_in_memory(
        server.clone(),
        client(
            vec![
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            &[&rustls::version::TLS13],
        )?,
    )
    .is_ok()
    {
        return Err("a TLS 1.3 client without AES-256-GCM got a session".into());
    }
    if handshake_in_memory(
        server,
        client(
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ],
            &[&rustls::version::TLS12],
        )?,
    )
    .is_ok()
    {
        return Err("a TLS 1.2 client got a session".into());
    }
    Ok(format!(
        "negotiated {ok}; TLS 1.3 AES-128/ChaCha20 and TLS 1.2 refused"
    ))
}

/// Days until the leaf certificate expires (negative when expired), and whether it is
/// valid now.
pub fn leaf_validity(cert: &PinnedCertificate) -> Result<(bool, i64), String> {
    let leaf = cert.chain().first().ok_or("empty chain")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let v = parsed.validity();
    let days = v.time_to_expiration().map(|d| d.whole_days()).unwrap_or(-1);
    Ok((v.is_valid(), days))
}
