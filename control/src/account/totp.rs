//! TOTP (RFC 6238) second factor: secrets, code checks that name the time step they matched (so
//! a code is accepted once), `otpauth://` URIs, the enrolment QR code as SVG, and recovery codes.

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use rand::RngCore;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

/// Seconds per code (the RFC's and every authenticator app's default).
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;
/// Codes of this many steps before or after now are accepted (clock drift, typing time).
pub const SKEW: u64 = 1;
/// Secret length: 160 bits, RFC 4226's recommendation.
pub const SECRET_BYTES: usize = 20;
/// Recovery codes handed out at enrolment.
pub const RECOVERY_CODES: usize = 10;
/// The issuer authenticator apps show.
pub const ISSUER: &str = "Kokoa";

/// A new random secret.
pub fn new_secret() -> Zeroizing<Vec<u8>> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_BYTES]);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

fn totp(secret: &[u8], account: &str) -> Option<TOTP> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP,
        secret.to_vec(),
        Some(ISSUER.to_string()),
        account.replace(':', "_"),
    )
    .ok()
}

/// The code for `unix_seconds` (tests and the enrolment page's self-check use it).
pub fn code_at(secret: &[u8], unix_seconds: u64) -> String {
    totp(secret, "x")
        .map(|t| t.generate(unix_seconds))
        .unwrap_or_default()
}

/// The time step `code` is valid for at `unix_seconds` (within ±[`SKEW`] steps), if any.
/// Spaces in the code are ignored.
pub fn matching_step(secret: &[u8], code: &str, unix_seconds: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, "x")?;
    let now = unix_seconds / STEP;
    let mut found = None;
    // Check every candidate (no early exit), comparing digests: timing says nothing about which.
    for step in now.saturating_sub(SKEW)..=now + SKEW {
        let expected = t.generate(step * STEP);
        if Sha256::digest(expected.as_bytes()) == Sha256::digest(code.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

/// The secret in base32 (what a person types into an authenticator app).
pub fn secret_base32(secret: &[u8]) -> String {
    totp(secret, "x")
        .map(|t| t.get_secret_base32())
        .unwrap_or_default()
}

/// The `otpauth://totp/Kokoa:ACCOUNT?secret=...&issuer=Kokoa` URI an app scans.
pub fn otpauth_url(secret: &[u8], account: &str) -> String {
    totp(secret, account)
        .map(|t| t.get_url())
        .unwrap_or_default()
}

/// The QR code of `text` as a standalone SVG element (dark modules on white, with the quiet
/// zone), sized by CSS.
pub fn qr_svg(text: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // Drop the XML declaration: the SVG goes inline into an HTML page.
    let start = image.find("<svg")?;
    Some(image[start..].to_string())
}

/// New recovery codes: 16 base32 characters (80 bits) each, shown as `xxxx-xxxx-xxxx-xxxx`.
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// The stored form of a recovery code: SHA-256 hex of it without dashes, spaces or case.
pub fn recovery_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let digest = Sha256::digest(normal.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `input` looks like a recovery code rather than a TOTP code.
pub fn is_recovery_code(input: &str) -> bool {
    input.chars().filter(|c| c.is_ascii_alphanumeric()).count() == 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890", last 6 of the 8 digits.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59), "287082");
        assert_eq!(code_at(secret, 1_111_111_109), "081804");
        assert_eq!(code_at(secret, 2_000_000_000), "279037");
    }

    #[test]
    fn codes_match_their_step_within_the_skew_only() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let code = code_at(&secret, now);
        assert_eq!(matching_step(&secret, &code, now), Some(now / STEP));
        assert_eq!(
            matching_step(&secret, &code, now + STEP),
            Some(now / STEP),
            "one step late is fine"
        );
        assert_eq!(matching_step(&secret, &code, now + 3 * STEP), None);
        assert_eq!(matching_step(&secret, "12345", now), None);
        assert_eq!(matching_step(&secret, "abcdef", now), None);
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert!(matching_step(&secret, &spaced, now).is_some());
    }

    #[test]
    fn otpauth_and_qr() {
        let secret = b"12345678901234567890";
        let url = otpauth_url(secret, "alice");
        assert!(
            url.starts_with("otpauth://totp/Kokoa:alice?secret="),
            "{url}"
        );
        assert!(url.contains("issuer=Kokoa"), "{url}");
        assert!(url.contains(&secret_base32(secret)));
        let svg = qr_svg(&url).expect("qr");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("#000000"));
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_normalized() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 19 && is_recovery_code(c)));
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        assert_eq!(
            recovery_hash(&codes[0]),
            recovery_hash(&codes[0].replace('-', " ").to_uppercase())
        );
        assert!(!is_recovery_code("123456"));
    }
}
