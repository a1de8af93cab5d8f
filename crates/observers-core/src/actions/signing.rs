//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Headers the webhook action sets itself; configured `headers` may not name them (any case).
pub const RESERVED_HEADERS: [&str; 5] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "idempotency-key",
];

/// The key bytes of a secret: `whsec_<base64>` decodes, and one that does not decode is an
/// error (never a fallback to signing with the text itself, which no receiver would verify);
/// a secret without the prefix is used as raw bytes.
pub fn secret_bytes(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => match STANDARD.decode(b64) {
            Ok(key) if !key.is_empty() => Ok(key),
            Ok(_) => Err("`whsec_` is followed by nothing; expected whsec_<base64 key>".into()),
            Err(e) => Err(format!(
                "starts with `whsec_` but the rest is not base64 ({e}); expected whsec_<base64 key>"
            )),
        },
        None if secret.is_empty() => Err("is empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` header value.
pub fn sign(secret: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Verifies a `webhook-signature` header (space-separated list of `v1,<sig>`), as a receiver
/// would. Constant-time comparison.
pub fn verify(secret: &[u8], msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| {
            STANDARD
                .decode(sig)
                .is_ok_and(|raw| mac.clone().verify_slice(&raw).is_ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference libraries.
    #[test]
    fn matches_the_reference_vector() {
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_whsec_secret_that_does_not_decode_is_refused() {
        for bad in ["whsec_not base64!", "whsec_", "whsec_%%%%", ""] {
            assert!(secret_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(secret_bytes("raw").unwrap(), b"raw");
    }

    #[test]
    fn verify_accepts_own_and_rejects_tampering() {
        let key = secret_bytes("plain-secret").unwrap();
        let sig = sign(&key, "id", 5, b"body");
        assert!(verify(&key, "id", 5, b"body", &sig));
        assert!(verify(&key, "id", 5, b"body", &format!("v1,bogus {sig}")));
        assert!(!verify(&key, "id", 5, b"bodx", &sig));
        assert!(!verify(&key, "id", 6, b"body", &sig));
        assert!(!verify(b"other", "id", 5, b"body", &sig));
    }
}
