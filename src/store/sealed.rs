//! The sealed (encrypted) values the store holds, named for the key rotation: which table
//! and column each lives in, what identifies its row, and the binding its ciphertext carries
//! (see [`crate::crypto::Binding`]). `valo-oauth rekey` walks them in pages and replaces each
//! with a compare-and-set, so it is safe while replicas serve and refresh.

use uuid::Uuid;

/// One column of sealed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SealedField {
    AppConsumerKey,
    AppConsumerSecret,
    ConnectionAccessToken,
    ConnectionRefreshToken,
    SessionPkceVerifier,
}

impl SealedField {
    pub const ALL: [SealedField; 5] = [
        Self::AppConsumerKey,
        Self::AppConsumerSecret,
        Self::ConnectionAccessToken,
        Self::ConnectionRefreshToken,
        Self::SessionPkceVerifier,
    ];

    /// The table, as the binding names it.
    pub fn table(self) -> &'static str {
        match self {
            Self::AppConsumerKey | Self::AppConsumerSecret => "tenant_apps",
            Self::ConnectionAccessToken | Self::ConnectionRefreshToken => "connections",
            Self::SessionPkceVerifier => "authorization_sessions",
        }
    }

    /// The column, as the binding names it (the stored column adds `_enc`).
    pub fn column(self) -> &'static str {
        match self {
            Self::AppConsumerKey => "consumer_key",
            Self::AppConsumerSecret => "consumer_secret",
            Self::ConnectionAccessToken => "access_token",
            Self::ConnectionRefreshToken => "refresh_token",
            Self::SessionPkceVerifier => "pkce_verifier",
        }
    }

    /// `table.column`, for operators.
    pub fn label(self) -> String {
        format!("{}.{}", self.table(), self.column())
    }

    /// Whether the row is identified by a tenant id (else by a uuid).
    pub(super) fn keyed_by_tenant(self) -> bool {
        matches!(self, Self::AppConsumerKey | Self::AppConsumerSecret)
    }
}

/// What identifies a sealed value's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowKey {
    Tenant(String),
    Id(Uuid),
}

impl RowKey {
    /// The row as the binding names it.
    pub fn binding_row(&self) -> String {
        match self {
            Self::Tenant(tenant) => tenant.clone(),
            Self::Id(id) => id.to_string(),
        }
    }
}

/// One sealed value and its row.
#[derive(Clone, Debug)]
pub struct SealedValue {
    pub key: RowKey,
    pub sealed: String,
}
