//! The encryption keys section: the keyring that seals stored tokens and secrets.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;
use super::dev_secrets::dev_secret;
use super::layers::Layers;
use crate::crypto::Keyring;

/// `encryption_keys`: required in production; generated into `data_dir` otherwise.
pub(super) fn keyring(
    l: &Layers,
    production: bool,
    data_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Keyring, ConfigError> {
    let encryption_keys = match l.get("encryption_keys") {
        Some(v) => SecretString::from(v.to_owned()),
        None if production => {
            return Err(l.err(
                "encryption_keys",
                "must be set in production (generate one with `valo-oauth keygen`)",
            ));
        }
        None => {
            let (value, note) = dev_secret(data_dir, "dev-encryption-keys", || {
                Keyring::generate_key_spec("dev1")
                    .expose_secret()
                    .to_owned()
            })
            .map_err(|e| l.err("encryption_keys", e))?;
            warnings.extend(note);
            SecretString::from(value)
        }
    };
    Keyring::parse(&encryption_keys).map_err(|e| l.err("encryption_keys", e.to_string()))
}
