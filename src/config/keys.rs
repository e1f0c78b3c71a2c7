//! The encryption keys section: the keyring that seals stored tokens and secrets.

use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;
use super::dev_secrets::DevSecrets;
use super::layers::Layers;
use crate::crypto::Keyring;

/// `encryption_keys`: required in production; generated into `data_dir` otherwise.
pub(super) fn keyring(l: &Layers, dev: &mut DevSecrets<'_>) -> Result<Keyring, ConfigError> {
    let encryption_keys = match &l.raw.encryption_keys {
        Some(v) => v.clone(),
        None if dev.production => {
            return Err(l.err(
                "encryption_keys",
                "must be set in production (generate one with `valo-oauth keygen`)",
            ));
        }
        None => {
            let value = dev
                .get("dev-encryption-keys", || {
                    Keyring::generate_key_spec("dev1")
                        .expose_secret()
                        .to_owned()
                })
                .map_err(|e| l.err("encryption_keys", e))?;
            SecretString::from(value)
        }
    };
    Keyring::parse(&encryption_keys).map_err(|e| l.err("encryption_keys", e.to_string()))
}
