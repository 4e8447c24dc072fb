//! Time-based one-time passwords (RFC 6238: HMAC-SHA-1, 30-second steps, 6 digits) and
//! one-time recovery codes, for the operators' second factor.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
/// Steps accepted either side of now (clock drift).
pub const WINDOW: i64 = 1;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (what authenticator apps read).
pub fn base32(data: &[u8]) -> String {
    let mut out = String::new();
    let mut buf: u64 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(BASE32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(BASE32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decode RFC 4648 base32 (no padding, case-insensitive); `None` on a bad character.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf: u64 = 0;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = BASE32.iter().position(|b| *b == c.to_ascii_uppercase())? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// A fresh 160-bit secret.
pub fn new_secret() -> Vec<u8> {
    let mut s = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// HOTP value (RFC 4226) for a counter, `digits` long.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = (u32::from(h[offset] & 0x7f) << 24)
        | (u32::from(h[offset + 1]) << 16)
        | (u32::from(h[offset + 2]) << 8)
        | u32::from(h[offset + 3]);
    bin % 10u32.pow(digits)
}

/// The time step of a Unix time.
pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// Check a 6-digit code at `unix_secs`. Returns the matching step when it is valid and
/// later than `last_used_step` (a code is never accepted twice).
pub fn verify(secret: &[u8], code: &str, unix_secs: i64, last_used_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let now = step_of(unix_secs);
    (now - WINDOW..=now + WINDOW)
        .filter(|s| *s > last_used_step && *s >= 0)
        .find(|s| hotp(secret, *s as u64, DIGITS) == want)
}

/// The provisioning URI authenticator apps scan.
pub fn otpauth_uri(username: &str, secret: &[u8]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/Palisade:{}?secret={}&issuer=Palisade&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(username),
        base32(secret)
    )
}

/// The URI as an SVG QR code (a standalone document; shown as an image, never inlined).
pub fn qr_svg(uri: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build())
}

/// Ten one-time recovery codes (`xxxxx-xxxxx`, 50 bits each) and their hashes.
pub fn recovery_codes() -> (Vec<String>, Vec<Vec<u8>>) {
    let mut codes = Vec::new();
    let mut hashes = Vec::new();
    for _ in 0..10 {
        let mut b = [0u8; 7];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let s = base32(&b).to_lowercase();
        let code = format!("{}-{}", &s[..5], &s[5..10]);
        hashes.push(recovery_hash(&code));
        codes.push(code);
    }
    (codes, hashes)
}

/// Hash of a recovery code as typed (case and dashes ignored).
pub fn recovery_hash(code: &str) -> Vec<u8> {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(format!("palisade recovery code v1:{norm}").as_bytes()).to_vec()
}

/// Does this look like a recovery code rather than a TOTP code?
pub fn looks_like_recovery(code: &str) -> bool {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).count() == 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(secret, step_of(t) as u64, 8), want, "T={t}");
        }
    }

    #[test]
    fn verify_accepts_the_window_once_and_rejects_garbage() {
        let secret = b"12345678901234567890";
        let t = 1111111109;
        let code = format!("{:06}", hotp(secret, step_of(t) as u64, 6));
        let step = verify(secret, &code, t, 0).unwrap();
        assert_eq!(step, step_of(t));
        assert_eq!(verify(secret, &code, t, step), None, "no replay");
        assert_eq!(
            verify(secret, &code, t + 30, 0),
            Some(step),
            "one step late is fine"
        );
        assert_eq!(
            verify(secret, &code, t + 90, 0),
            None,
            "three steps late is not"
        );
        assert_eq!(verify(secret, "12345", t, 0), None);
        assert_eq!(verify(secret, "abcdef", t, 0), None);
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap(), b"foobar");
        let s = new_secret();
        assert_eq!(base32_decode(&base32(&s)).unwrap(), s);
        assert!(base32_decode("not base32!").is_none());
    }

    #[test]
    fn recovery_codes_hash_independently_of_case_and_dashes() {
        let (codes, hashes) = recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(
            recovery_hash(&codes[3].to_uppercase().replace('-', "")),
            hashes[3]
        );
        assert!(looks_like_recovery(&codes[0]) && !looks_like_recovery("123456"));
        assert!(qr_svg(&otpauth_uri("ann", b"x"))
            .unwrap()
            .starts_with("<?xml"));
    }
}
