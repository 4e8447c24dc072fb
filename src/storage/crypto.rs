//! At-rest encryption: AES-256-GCM with a random 96-bit nonce per record.
//!
//! Sealed format: `fingerprint (4) || nonce (12) || ciphertext+tag`. The fingerprint names
//! the data key so keys can rotate; the associated data binds each ciphertext to its table,
//! column and row, so a ciphertext copied into another row fails to open.

use crate::secret::SecretKey;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    fingerprint: [u8; 4],
    audit_key: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(key {})", crate::policy::hex(&self.fingerprint))
    }
}

impl Sealer {
    pub fn new(key: &SecretKey) -> Sealer {
        let mut h = Sha256::new();
        h.update(b"palisade data key fingerprint v1");
        h.update(key.expose());
        let d = h.finalize();
        let mut a = Sha256::new();
        a.update(b"palisade audit chain key v1");
        a.update(key.expose());
        Sealer {
            cipher: Aes256Gcm::new(key.expose().into()),
            fingerprint: [d[0], d[1], d[2], d[3]],
            audit_key: zeroize::Zeroizing::new(a.finalize().into()),
        }
    }

    /// HMAC-SHA-256 under the audit-chain key (derived from the data key).
    pub fn audit_mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        use hmac::Mac;
        let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.audit_key[..])
            .expect("HMAC takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }

    pub fn fingerprint(&self) -> String {
        crate::policy::hex(&self.fingerprint)
    }

    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a bounded buffer cannot fail");
        let mut out = Vec::with_capacity(16 + ct.len());
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt; nothing is returned unless the tag verifies.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < 4 + 12 + 16 {
            return Err("sealed value too short".into());
        }
        if sealed[..4] != self.fingerprint {
            return Err(format!(
                "sealed under data key {}, but the loaded key is {}",
                crate::policy::hex(&sealed[..4]),
                self.fingerprint()
            ));
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed[4..16]),
                Payload {
                    msg: &sealed[16..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| "authentication tag mismatch (tampered or moved ciphertext)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_row_binding() {
        let s = Sealer::new(&SecretKey::from_bytes([3u8; 32]));
        let a = s.seal("events/body/1", b"hello");
        assert_eq!(s.open("events/body/1", &a).unwrap(), b"hello");
        assert!(
            s.open("events/body/2", &a).is_err(),
            "moved ciphertext must fail"
        );
        let b = s.seal("events/body/1", b"hello");
        assert_ne!(a, b, "nonces are unique");
        let other = Sealer::new(&SecretKey::from_bytes([4u8; 32]));
        assert!(other
            .open("events/body/1", &a)
            .unwrap_err()
            .contains("data key"));
        let mut t = a.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(s.open("events/body/1", &t).is_err());
    }
}
