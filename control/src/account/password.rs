//! Passwords: the length rule, and Argon2id hashing and verification.
//!
//! Argon2id with the `argon2` crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's recommended
//! minimum), stored as a PHC string so the parameters travel with the hash and can be raised
//! later. Hashing costs tens of milliseconds of CPU on purpose; callers run it on the blocking
//! pool behind [`super::Accounts`]'s hashing semaphore.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::store::StoreError;

/// Shortest password accepted.
pub const MIN_LENGTH: usize = 10;
/// Longest password accepted (bytes): a bound on what a login request makes Argon2 read.
pub const MAX_LENGTH: usize = 1024;

/// Checks a new password's length. `field` names it in the error.
pub fn check(field: &'static str, password: &str) -> Result<(), StoreError> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Err(StoreError::Invalid {
            field: field.into(),
            reason: format!("must be at least {MIN_LENGTH} characters"),
        });
    }
    if password.len() > MAX_LENGTH {
        return Err(StoreError::Invalid {
            field: field.into(),
            reason: format!("must be at most {MAX_LENGTH} bytes"),
        });
    }
    Ok(())
}

/// The Argon2id PHC string of `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| StoreError::Invalid {
            field: "password".into(),
            reason: format!("cannot hash it: {e}"),
        })
}

/// Whether `password` matches the PHC string `phc` (any Argon2 variant and parameters).
pub fn verify(phc: &str, password: &str) -> bool {
    if password.len() > MAX_LENGTH {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, verified against when the account does not exist so that an
/// unknown name takes as long as a wrong password.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut random = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        hash(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            random,
        ))
        .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery").expect("hash");
        let b = hash("correct horse battery").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify(&a, "correct horse battery"));
        assert!(!verify(&a, "correct horse batterz"));
        assert!(!verify("not a hash", "x"));
        assert!(!verify(decoy(), ""));
    }

    #[test]
    fn length_rules() {
        assert!(check("password", "short").is_err());
        assert!(check("password", "long enough!").is_ok());
        assert!(check("password", &"x".repeat(MAX_LENGTH + 1)).is_err());
    }
}
