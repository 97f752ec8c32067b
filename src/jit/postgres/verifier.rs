//! The SCRAM-SHA-256 verifier a JIT role is created with (`CREATE ROLE … PASSWORD
//! 'SCRAM-SHA-256$…'`), so that the target only ever sees the verifier, never the password.
//!
//! PostgreSQL's own default stretches the password with 4096 PBKDF2-HMAC-SHA-256 iterations,
//! and the login pays them again on the client side (the gateway): together about half of
//! the gateway's CPU per new connection (BENCHMARKS.md). Stretching slows guessing of a
//! password a person chose; a JIT role's password is 43 random alphanumeric characters
//! (about 256 bits, `lease::random_password`), which no number of iterations makes easier or
//! harder to guess from the verifier. So the verifier carries [`JIT_ITERATIONS`], and the
//! login's client side follows the count the server sends. PostgreSQL reads the count from
//! the verifier and accepts any positive one (`scram_iterations`, 16+, has the same floor).

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use ring::{digest, hmac, pbkdf2};

/// PBKDF2 iterations in a JIT role's verifier (see the module comment for why one is enough).
pub const JIT_ITERATIONS: NonZeroU32 = NonZeroU32::MIN;

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802 §3, PostgreSQL's
/// `pg_authid.rolpassword` format) for `password` with a fresh 16-byte salt.
pub fn scram_verifier(password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    verifier_with(password, &salt, JIT_ITERATIONS)
}

fn verifier_with(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> String {
    let mut salted = [0u8; digest::SHA256_OUTPUT_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key.as_ref()),
        STANDARD.encode(server_key.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Expected values from Python's hashlib/hmac (an independent implementation).
    #[test]
    fn matches_an_independent_implementation() {
        let salt = [7u8; 16];
        for (iterations, expected) in [
            (4096, "SCRAM-SHA-256$4096:BwcHBwcHBwcHBwcHBwcHBw==$K97YndbwHX05fl7lN8Bcm3gG4nc43WvYj0OL1dbknsk=:tvU6S2vfOxKAzPZ5dC4h+cucyZ553rNC2MQ2ZJzmu3g="),
            (1, "SCRAM-SHA-256$1:BwcHBwcHBwcHBwcHBwcHBw==$XIyLahSjxI7WzOTbFRtvgFqWpxRKFF2HSDsjq3bZnCk=:UUrn4LS6R+o7pW5c0K0zDjR6xp+VilcWJvhUFaNcIZs="),
        ] {
            let n = NonZeroU32::new(iterations).unwrap();
            assert_eq!(verifier_with(b"pencil", &salt, n), expected);
        }
    }

    #[test]
    fn jit_verifiers_carry_one_iteration_and_a_fresh_salt() {
        let a = scram_verifier(b"pencil");
        let b = scram_verifier(b"pencil");
        assert!(a.starts_with("SCRAM-SHA-256$1:"), "{a}");
        assert_ne!(a, b);
    }
}
