//! Verification of the `signature` field of a Salesforce token response.
//!
//! Salesforce Help "OAuth 2.0 Web Server Flow" (token response): `signature` is
//! Base64(HMAC-SHA256(key = consumer secret, message = `id` + `issued_at`)). A mismatch means
//! the response did not come from the Salesforce org holding our consumer secret.

use base64::Engine as _;
use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Standard alphabet, padding optional on decode.
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Salesforce `signature`: base64(HMAC-SHA256(key = consumer secret, msg = id + issued_at)).
/// Constant-time comparison (hmac's verify_slice). Accepts standard base64 with or without
/// padding.
pub fn verify_signature(
    consumer_secret: &SecretString,
    id: &str,
    issued_at: &str,
    signature_b64: &str,
) -> bool {
    let Ok(expected) = STANDARD_ANY_PADDING.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(consumer_secret.expose_secret().as_bytes())
    else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

    const ID: &str = "https://login.salesforce.com/id/00D000000000000IAA/005D0000001az5dIAA";
    const ISSUED_AT: &str = "1738348388166";

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn sign(key: &str, msg: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(msg.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    #[test]
    fn rfc4231_vector_via_the_public_function() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?", split as
        // id + issued_at.
        let expected_hex = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let bytes: Vec<u8> = (0..expected_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&expected_hex[i..i + 2], 16).unwrap())
            .collect();
        let sig = STANDARD.encode(bytes);
        assert!(verify_signature(
            &secret("Jefe"),
            "what do ya ",
            "want for nothing?",
            &sig
        ));
    }

    #[test]
    fn verifies_and_rejects() {
        let sig = STANDARD.encode(sign("consumer-secret", &format!("{ID}{ISSUED_AT}")));
        let s = secret("consumer-secret");
        assert!(verify_signature(&s, ID, ISSUED_AT, &sig));
        // Without padding too.
        let unpadded = STANDARD_NO_PAD.encode(sign("consumer-secret", &format!("{ID}{ISSUED_AT}")));
        assert!(sig.ends_with('='));
        assert!(verify_signature(&s, ID, ISSUED_AT, &unpadded));
        // Wrong secret, wrong issued_at, wrong id, garbage, truncated.
        assert!(!verify_signature(&secret("other"), ID, ISSUED_AT, &sig));
        assert!(!verify_signature(&s, ID, "1738348388167", &sig));
        assert!(!verify_signature(
            &s,
            &ID.replace("IAA/", "IAB/"),
            ISSUED_AT,
            &sig
        ));
        assert!(!verify_signature(&s, ID, ISSUED_AT, "not base64!"));
        assert!(!verify_signature(&s, ID, ISSUED_AT, &sig[..20]));
        assert!(!verify_signature(&s, ID, ISSUED_AT, ""));
    }
}
