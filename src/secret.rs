//! Secrets as a type: never printed, wiped on drop.
//!
//! Passwords, the authentication string, session tokens and the data key travel through
//! the code as [`Secret`]. `Debug` prints only the length, there is no `Display`, and the
//! bytes are zeroed when the value is dropped.

use zeroize::{Zeroize, Zeroizing};

/// `Debug` for a request body that carries visitor data or a secret: the type's name and a
/// fixed note, never a field, e.g. `redacted_debug!(RatingBody, "comment redacted")` prints
/// `RatingBody([comment redacted])`.
macro_rules! redacted_debug {
    ($t:ident, $note:literal) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "([", $note, "])"))
            }
        }
    };
}
pub(crate) use redacted_debug;

/// A secret string (password, authentication string, session token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    /// The secret's text; callers must not log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret([{} bytes redacted])", self.0.len())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = String::deserialize(d)?;
        let out = Secret::new(s.clone());
        s.zeroize();
        Ok(out)
    }
}

/// 32 secret bytes (the at-rest data key).
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        SecretKey(Zeroizing::new(b))
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([32 bytes redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2-marker".into());
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("14 bytes"));
        let k = SecretKey::from_bytes([7u8; 32]);
        assert!(!format!("{k:?}").contains('7'));
    }
}
