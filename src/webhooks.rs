//! Outbound webhooks to the Valo backend, following the Standard Webhooks specification
//! ("Standard Webhooks", https://www.standardwebhooks.com/, and its `spec/standard-webhooks.md`):
//! the secret's format, the signature, and one signed `POST`.
//!
//! What to send and when (the outbox, retries, order) is the broker's business
//! (`crate::broker::outbox`); this module only signs and posts, and knows no SQL.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use url::Url;

/// The prefix of a signing secret (the specification's, as Svix prints them).
const SECRET_PREFIX: &str = "whsec_";
/// The specification asks for secrets of 24 to 64 random bytes.
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;
/// A fresh secret's size.
const GENERATED_SECRET_BYTES: usize = 32;
/// The most of a receiver's answer read (to classify it); the rest is dropped.
const MAX_ANSWER_BYTES: usize = 4096;

/// The signing secret: `whsec_` + base64 of the key bytes. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct WebhookSecret(SecretSlice<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`; the error never repeats the value.
    pub fn parse(raw: &SecretString) -> Result<Self, String> {
        let raw = raw.expose_secret().trim();
        let encoded = raw.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            format!("must start with {SECRET_PREFIX} (generate one with `valo-oauth keygen --webhook-secret`)")
        })?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| format!("the part after {SECRET_PREFIX} must be standard base64"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(format!(
                "must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (it holds {})",
                bytes.len()
            ));
        }
        Ok(Self(SecretSlice::from(bytes)))
    }

    /// A fresh secret from the operating system's random source, as `whsec_<base64>`.
    pub fn generate() -> SecretString {
        let mut bytes = [0u8; GENERATED_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let spec = format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes));
        bytes.fill(0);
        SecretString::from(spec)
    }

    /// `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)): the value of the
    /// `webhook-signature` header (the specification's "Signature scheme").
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        // HMAC accepts keys of any length (RFC 2104 §3); this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Where and how to post.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: Url,
    pub secret: WebhookSecret,
    /// The whole attempt, connect to last byte; longer counts as a failed attempt.
    pub timeout: Duration,
}

/// Shows the URL without its query (which might carry a token) and never the secret.
impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if url.query().is_some() {
            url.set_query(Some("[redacted]"));
        }
        f.debug_struct("WebhookTarget")
            .field("url", &url.as_str())
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Another status (retried).
    Rejected(u16),
    /// No answer in time (retried).
    TimedOut,
    /// No connection, or it broke (retried).
    Failed(String),
}

impl Attempt {
    /// A short, secret-free description for the outbox row and the log.
    pub fn describe(&self) -> String {
        match self {
            Self::Delivered => "delivered".into(),
            Self::Rejected(status) => format!("the receiver answered {status}"),
            Self::TimedOut => "no answer before the webhook timeout".into(),
            Self::Failed(reason) => reason.clone(),
        }
    }
}

/// Posts signed events: one HTTP client for the process, redirects never followed (a
/// redirect would send the signed body where nobody configured it to go).
#[derive(Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    target: WebhookTarget,
}

impl WebhookSender {
    pub fn new(target: WebhookTarget) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(target.timeout)
            .connect_timeout(target.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("valo-oauth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, target })
    }

    /// One attempt: `POST` the body with the three headers of the specification, signed
    /// for `timestamp` (Unix seconds of this attempt).
    pub async fn post(&self, id: &str, timestamp: i64, body: &str) -> Attempt {
        let signature = self.target.secret.sign(id, timestamp, body);
        let sent = self
            .http
            .post(self.target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status();
                // Read a little of the answer so the connection can be reused; its content
                // does not matter.
                let mut read = 0;
                while read < MAX_ANSWER_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                if status.is_success() {
                    Attempt::Delivered
                } else {
                    Attempt::Rejected(status.as_u16())
                }
            }
            Err(e) if e.is_timeout() => Attempt::TimedOut,
            // reqwest's message names the URL (the operator's, no secret in it) and the
            // cause; the body and headers are never part of it.
            Err(e) if e.is_connect() => Attempt::Failed("cannot connect to the receiver".into()),
            Err(_) => Attempt::Failed("the request to the receiver failed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn signs_like_the_specification_example() {
        // The example of the Standard Webhooks reference libraries' test suites.
        let secret = WebhookSecret::parse(&SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ))
        .unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_never_echoed() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let error = WebhookSecret::parse(&SecretString::from(bad)).unwrap_err();
            assert!(bad.len() < 8 || !error.contains(bad), "{error}");
        }
        let generated = WebhookSecret::generate();
        let parsed = WebhookSecret::parse(&generated).unwrap();
        assert_eq!(format!("{parsed:?}"), "WebhookSecret([redacted])");
        assert_ne!(
            WebhookSecret::generate().expose_secret(),
            generated.expose_secret()
        );
    }
}
