//! The encryption keyring: AES-256-GCM for every secret the service stores.
//!
//! Each value is sealed with a fresh random 96-bit nonce under the *first* key of the ring
//! and carries that key's id, so keys can rotate: add a new key in front, and every older
//! key still decrypts what it sealed. The associated data names the value's row and column
//! (`connections/{id}/refresh_token`), so a ciphertext copied into another row or column
//! fails authentication instead of decrypting into the wrong place.
//!
//! Stored form: `v1.{key_id}.{base64url(nonce || ciphertext+tag)}` (ASCII, fits a TEXT
//! column). The key id is part of the associated data too.

use std::fmt;

use aes_gcm::aead::{Aead, Generate, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};

const FORMAT_VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Where a sealed value lives: its table, row and column. Rendered into the AEAD's
/// associated data.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub table: &'a str,
    pub row: &'a str,
    pub column: &'a str,
}

impl<'a> Binding<'a> {
    pub fn new(table: &'a str, row: &'a str, column: &'a str) -> Self {
        Self { table, row, column }
    }

    fn associated_data(&self, key_id: &str) -> Vec<u8> {
        format!(
            "valo-oauth/{FORMAT_VERSION}/{key_id}/{}/{}/{}",
            self.table, self.row, self.column
        )
        .into_bytes()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("no encryption key configured")]
    Empty,
    #[error("key entry {0} is not KEY_ID:BASE64")]
    Malformed(usize),
    #[error("key id {0:?} must be 1-32 characters of A-Z a-z 0-9 _ -")]
    BadKeyId(String),
    #[error("key {0:?} must be 32 bytes of standard base64 (got {1} bytes)")]
    BadKeyLength(String, usize),
    #[error("key {0:?} is not valid base64")]
    BadBase64(String),
    #[error("key id {0:?} appears twice")]
    DuplicateKeyId(String),
    #[error("ciphertext is not in the v1 format")]
    BadFormat,
    #[error("ciphertext was sealed with key {0:?}, which is not in the keyring")]
    UnknownKey(String),
    #[error("ciphertext failed authentication (tampered, or bound to another row or column)")]
    Authentication,
    #[error("encryption failed")]
    Encryption,
}

struct KeyEntry {
    id: String,
    cipher: Aes256Gcm,
}

/// The ring of AES-256-GCM keys. The first key seals; every key opens.
pub struct Keyring {
    keys: Vec<KeyEntry>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Keyring {
    /// Parses `KEY_ID:BASE64[,KEY_ID:BASE64…]` (standard base64 of 32 bytes each).
    pub fn parse(spec: &SecretString) -> Result<Self, KeyringError> {
        let mut keys: Vec<KeyEntry> = Vec::new();
        for (index, entry) in spec
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, b64) = entry
                .split_once(':')
                .ok_or(KeyringError::Malformed(index + 1))?;
            if !valid_key_id(id) {
                return Err(KeyringError::BadKeyId(id.to_owned()));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::DuplicateKeyId(id.to_owned()));
            }
            let bytes = zeroize::Zeroizing::new(
                STANDARD
                    .decode(b64.trim())
                    .map_err(|_| KeyringError::BadBase64(id.to_owned()))?,
            );
            if bytes.len() != KEY_LEN {
                return Err(KeyringError::BadKeyLength(id.to_owned(), bytes.len()));
            }
            let key = Key::<Aes256Gcm>::try_from(bytes.as_slice())
                .map_err(|_| KeyringError::BadKeyLength(id.to_owned(), bytes.len()))?;
            keys.push(KeyEntry {
                id: id.to_owned(),
                cipher: Aes256Gcm::new(&key),
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self { keys })
    }

    /// A fresh random key in the configuration format `KEY_ID:BASE64`.
    pub fn generate_key_spec(key_id: &str) -> SecretString {
        let mut bytes = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut_slice());
        SecretString::from(format!("{key_id}:{}", STANDARD.encode(bytes.as_slice())))
    }

    /// The id of the key that seals new values.
    pub fn primary_key_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Seals `plaintext` under the primary key, bound to `binding`.
    pub fn seal(&self, plaintext: &str, binding: Binding<'_>) -> Result<String, KeyringError> {
        let key = self.keys.first().ok_or(KeyringError::Empty)?;
        let nonce = Nonce::<Aes256Gcm>::generate();
        let aad = binding.associated_data(&key.id);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| KeyringError::Encryption)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(nonce.as_slice());
        blob.extend_from_slice(&ciphertext);
        Ok(format!(
            "{FORMAT_VERSION}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Opens a value sealed by [`Keyring::seal`] with the same binding.
    pub fn open(&self, sealed: &str, binding: Binding<'_>) -> Result<SecretString, KeyringError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(FORMAT_VERSION), Some(key_id), Some(body)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyringError::BadFormat);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| KeyringError::UnknownKey(key_id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| KeyringError::BadFormat)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(KeyringError::BadFormat);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| KeyringError::BadFormat)?;
        let aad = binding.associated_data(&key.id);
        let plaintext = zeroize::Zeroizing::new(
            key.cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| KeyringError::Authentication)?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| KeyringError::Authentication)?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// Every key id of the ring, the sealing one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The prefix every value sealed under the primary key starts with (`v1.<key id>.`).
    pub fn primary_prefix(&self) -> String {
        format!("{FORMAT_VERSION}.{}.", self.primary_key_id())
    }

    /// The value sealed again under the primary key, bound to the same place; `None` when it
    /// already is. Fails when the value's key is not in the ring (or the value was tampered
    /// with): such a value cannot be re-sealed by anyone.
    pub fn reseal(
        &self,
        sealed: &str,
        binding: Binding<'_>,
    ) -> Result<Option<String>, KeyringError> {
        if sealed.starts_with(&self.primary_prefix()) {
            return Ok(None);
        }
        let plaintext = self.open(sealed, binding)?;
        self.seal(plaintext.expose_secret(), binding).map(Some)
    }
}

/// The id of the key a value was sealed with (`v1.<key id>.…`), without opening it.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(FORMAT_VERSION), Some(key_id), Some(_)) => Some(key_id),
        _ => None,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(&SecretString::from(spec.to_owned())).unwrap()
    }

    fn key(id: &str) -> String {
        Keyring::generate_key_spec(id).expose_secret().to_owned()
    }

    const ROW: Binding<'static> = Binding {
        table: "connections",
        row: "11111111-1111-1111-1111-111111111111",
        column: "refresh_token",
    };

    #[test]
    fn reseal_moves_a_value_to_the_primary_key_and_leaves_it_there() {
        let (k1, k2) = (key("k1"), key("k2"));
        let old = ring(&k1).seal("5Aep861secret", ROW).unwrap();
        let both = ring(&format!("{k2},{k1}"));
        let new = both.reseal(&old, ROW).unwrap().unwrap();
        assert_eq!(sealed_key_id(&old), Some("k1"));
        assert_eq!(sealed_key_id(&new), Some("k2"));
        assert_eq!(
            ring(&k2).open(&new, ROW).unwrap().expose_secret(),
            "5Aep861secret",
            "readable with the new key alone"
        );
        assert_eq!(both.reseal(&new, ROW).unwrap(), None, "nothing to do twice");
        let other_row = Binding {
            row: "other",
            ..ROW
        };
        assert_eq!(
            both.reseal(&old, other_row),
            Err(KeyringError::Authentication),
            "the binding still holds"
        );
        assert!(matches!(
            ring(&k2).reseal(&old, ROW),
            Err(KeyringError::UnknownKey(id)) if id == "k1"
        ));
        assert_eq!(sealed_key_id("garbage"), None);
    }

    #[test]
    fn round_trip_and_random_nonce() {
        let k = ring(&key("k1"));
        let a = k.seal("5Aep861secret", ROW).unwrap();
        let b = k.seal("5Aep861secret", ROW).unwrap();
        assert_ne!(a, b, "each seal must use a fresh nonce");
        assert!(a.starts_with("v1.k1."));
        assert!(!a.contains("5Aep861secret"));
        assert_eq!(k.open(&a, ROW).unwrap().expose_secret(), "5Aep861secret");
    }

    #[test]
    fn tampering_fails() {
        let k = ring(&key("k1"));
        let sealed = k.seal("secret", ROW).unwrap();
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            k.open(&tampered, ROW).unwrap_err(),
            KeyringError::Authentication
        );
        assert_eq!(k.open("garbage", ROW).unwrap_err(), KeyringError::BadFormat);
    }

    #[test]
    fn ciphertext_bound_to_row_and_column() {
        let k = ring(&key("k1"));
        let sealed = k.seal("secret", ROW).unwrap();
        let other_row = Binding::new(
            "connections",
            "22222222-2222-2222-2222-222222222222",
            "refresh_token",
        );
        let other_column = Binding::new("connections", ROW.row, "access_token");
        let other_table = Binding::new("tenant_apps", ROW.row, "refresh_token");
        for b in [other_row, other_column, other_table] {
            assert_eq!(
                k.open(&sealed, b).unwrap_err(),
                KeyringError::Authentication
            );
        }
    }

    #[test]
    fn unknown_key_id_is_named() {
        let old = ring(&key("old"));
        let sealed = old.seal("secret", ROW).unwrap();
        let new = ring(&key("new"));
        assert_eq!(
            new.open(&sealed, ROW).unwrap_err(),
            KeyringError::UnknownKey("old".into())
        );
    }

    #[test]
    fn rotation_first_key_seals_all_keys_open() {
        let (old_spec, new_spec) = (key("old"), key("new"));
        let before = ring(&old_spec);
        let sealed_old = before.seal("secret", ROW).unwrap();
        let rotated = ring(&format!("{new_spec},{old_spec}"));
        assert_eq!(rotated.primary_key_id(), "new");
        assert_eq!(
            rotated.open(&sealed_old, ROW).unwrap().expose_secret(),
            "secret"
        );
        let sealed_new = rotated.seal("secret", ROW).unwrap();
        assert!(sealed_new.starts_with("v1.new."));
        assert_eq!(
            before.open(&sealed_new, ROW).unwrap_err(),
            KeyringError::UnknownKey("new".into())
        );
    }

    #[test]
    fn key_id_cannot_be_swapped() {
        // Two keys with the same bytes but different ids: the id is in the AAD, so
        // relabelling a ciphertext's key id fails.
        let bytes = key("a").split_once(':').unwrap().1.to_owned();
        let k = ring(&format!("a:{bytes},b:{bytes}"));
        let sealed = k.seal("secret", ROW).unwrap();
        let relabelled = sealed.replacen("v1.a.", "v1.b.", 1);
        assert_eq!(
            k.open(&relabelled, ROW).unwrap_err(),
            KeyringError::Authentication
        );
    }

    #[test]
    fn parse_errors_are_precise_and_secret_free() {
        let p = |s: &str| Keyring::parse(&SecretString::from(s.to_owned())).unwrap_err();
        assert_eq!(p(""), KeyringError::Empty);
        assert_eq!(p("nocolon"), KeyringError::Malformed(1));
        assert_eq!(p("bad id:AAAA"), KeyringError::BadKeyId("bad id".into()));
        assert_eq!(p("k:c2hvcnQ="), KeyringError::BadKeyLength("k".into(), 5));
        assert_eq!(p("k:!!!"), KeyringError::BadBase64("k".into()));
        let spec = key("k");
        assert_eq!(
            p(&format!("{spec},{spec}")),
            KeyringError::DuplicateKeyId("k".into())
        );
        let material = spec.split_once(':').unwrap().1;
        let debug = format!("{:?}", ring(&spec));
        assert!(!debug.contains(material));
    }
}
