//! The API auth section: how Valo's bearer tokens are verified (`api_jwt_…`).

use std::fmt;

use jsonwebtoken::DecodingKey;
use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;
use super::dev_secrets::DevSecrets;
use super::layers::Layers;

/// How API bearer tokens are verified (the algorithm is pinned by this choice).
#[derive(Clone)]
pub enum ApiKey {
    /// HS256 with the value's UTF-8 bytes as the key.
    Hs256(SecretString),
    /// EdDSA or RS256 with a PEM public key (the PEM decides which).
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hs256(_) => f.write_str("Hs256([redacted])"),
            Self::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiAuthSettings {
    pub key: ApiKey,
    pub audience: String,
    pub issuer: Option<String>,
    /// How many verified bearer tokens to remember (0 disables the cache).
    pub cache_capacity: usize,
}

/// The key, then `api_jwt_audience`, `api_jwt_issuer` and `api_jwt_cache_capacity`.
pub(super) fn resolve(
    l: &Layers,
    dev: &mut DevSecrets<'_>,
) -> Result<ApiAuthSettings, ConfigError> {
    let key = key(l, dev)?;
    Ok(ApiAuthSettings {
        key,
        audience: l
            .raw
            .api_jwt_audience
            .as_deref()
            .ok_or_else(|| l.err("api_jwt_audience", "must not be empty"))?
            .trim()
            .to_owned(),
        issuer: l.raw.api_jwt_issuer.as_deref().map(|s| s.trim().to_owned()),
        cache_capacity: l.raw.api_jwt_cache_capacity,
    })
}

/// Either `api_jwt_secret` (HS256) or `api_jwt_public_key_file` (EdDSA / RS256); one of
/// them is required in production, and a secret is generated into `data_dir` otherwise.
fn key(l: &Layers, dev: &mut DevSecrets<'_>) -> Result<ApiKey, ConfigError> {
    let key_file = l.raw.api_jwt_public_key_file.as_deref();
    match (&l.raw.api_jwt_secret, key_file) {
        (Some(_), Some(_)) => Err(l.err(
            "api_jwt_public_key_file",
            format!("set either it or {}, not both", l.name("api_jwt_secret")),
        )),
        (Some(secret), None) => {
            if secret.expose_secret().len() < 32 {
                return Err(l.err(
                    "api_jwt_secret",
                    "must be at least 32 bytes (RFC 7518 §3.2)",
                ));
            }
            Ok(ApiKey::Hs256(secret.clone()))
        }
        (None, Some(path)) => public_key_file(l, path),
        (None, None) if dev.production => Err(l.err(
            "api_jwt_secret",
            format!(
                "must be set in production (or {})",
                l.name("api_jwt_public_key_file")
            ),
        )),
        (None, None) => {
            let value = dev
                .get("dev-api-jwt-secret", || {
                    let mut bytes = [0u8; 32];
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
                })
                .map_err(|e| l.err("api_jwt_secret", e))?;
            Ok(ApiKey::Hs256(SecretString::from(value)))
        }
    }
}

fn public_key_file(l: &Layers, path: &str) -> Result<ApiKey, ConfigError> {
    let pem = std::fs::read(path.trim()).map_err(|e| {
        l.err(
            "api_jwt_public_key_file",
            format!("cannot read {path}: {e}"),
        )
    })?;
    check_public_key(&pem).map_err(|e| l.err("api_jwt_public_key_file", e))?;
    Ok(ApiKey::PublicKeyPem(pem))
}

/// Checks that a PEM holds an Ed25519 or RSA public key.
fn check_public_key(pem: &[u8]) -> Result<(), String> {
    public_key(pem).map(|_| ())
}

/// The verifying key of a PEM Ed25519 or RSA public key, and the one algorithm it pins
/// (EdDSA tried first, then RS256): the keys API bearer tokens may be signed with.
pub fn public_key(pem: &[u8]) -> Result<(DecodingKey, jsonwebtoken::Algorithm), String> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, jsonwebtoken::Algorithm::EdDSA));
    }
    DecodingKey::from_rsa_pem(pem)
        .map(|key| (key, jsonwebtoken::Algorithm::RS256))
        .map_err(|_| "is not a PEM Ed25519 or RSA public key".to_owned())
}
