//! Key rotation to completion: re-sealing every stored secret under the keyring's first key
//! ([`rekey`]) and counting what each key still seals ([`key_usage`]), so an operator knows
//! when an old key may leave `VALO_OAUTH_ENCRYPTION_KEYS`.
//!
//! Safe while replicas serve and refresh: each value is replaced with a compare-and-set on
//! its old ciphertext, so a value a refresh or a re-registration rewrote meanwhile (already
//! under the new key, once every replica runs with it first) is left alone. Resumable: a
//! run starts over from the first row and finds only what is left.

use std::collections::BTreeMap;

use crate::crypto::{Binding, Keyring, sealed_key_id};
use crate::store::{SealedField, Store, StoreError};

/// How far a [`rekey`] run has come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Values found not sealed under the first key.
    pub examined: u64,
    /// Values re-sealed under the first key.
    pub resealed: u64,
    /// Values rewritten by the service between the read and the replacement (left alone).
    pub changed_meanwhile: u64,
    /// Values no key of the ring opens (their key is gone, or they were tampered with).
    pub unreadable: u64,
}

/// How many values one key seals in one column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    pub field: SealedField,
    /// The key id, or `"(unrecognised)"` for a value not in the sealed format.
    pub key_id: String,
    pub values: u64,
}

/// Re-seals, `batch` rows at a time, every value not sealed under the first key; calls
/// `progress` after each batch.
pub async fn rekey(
    store: &Store,
    keyring: &Keyring,
    batch: i64,
    progress: &mut dyn FnMut(&RekeyReport),
) -> Result<RekeyReport, StoreError> {
    let prefix = keyring.primary_prefix();
    let mut report = RekeyReport::default();
    for field in SealedField::ALL {
        let mut after = None;
        loop {
            let page = store
                .sealed_page(field, after.as_ref(), Some(&prefix), batch)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for value in &page {
                report.examined += 1;
                let row = value.key.binding_row();
                let binding = Binding::new(field.table(), &row, field.column());
                match keyring.reseal(&value.sealed, binding) {
                    Ok(Some(new)) => {
                        if store
                            .replace_sealed(field, &value.key, &value.sealed, &new)
                            .await?
                        {
                            report.resealed += 1;
                        } else {
                            report.changed_meanwhile += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        report.unreadable += 1;
                        tracing::warn!(
                            field = %field.label(),
                            row = %row,
                            error = %e,
                            "a stored secret cannot be opened with any key of the ring; left as it is"
                        );
                    }
                }
            }
            progress(&report);
        }
    }
    Ok(report)
}

/// How many stored values each key id seals, column by column.
pub async fn key_usage(store: &Store, batch: i64) -> Result<Vec<KeyUsage>, StoreError> {
    let mut usage = Vec::new();
    for field in SealedField::ALL {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut after = None;
        loop {
            let page = store
                .sealed_page(field, after.as_ref(), None, batch)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for value in &page {
                let key_id = sealed_key_id(&value.sealed).unwrap_or("(unrecognised)");
                *counts.entry(key_id.to_owned()).or_default() += 1;
            }
        }
        usage.extend(counts.into_iter().map(|(key_id, values)| KeyUsage {
            field,
            key_id,
            values,
        }));
    }
    Ok(usage)
}
