//! Tenants' External Client App credentials ("bring your own ECA").
//!
//! The consumer key and secret are both sealed before they reach the store (the setup guide
//! treats both as secret) and are never returned: reads answer metadata and a masked hint.
//!
//! Before new credentials are stored they are tried at the login host's token endpoint
//! ([`crate::salesforce::SalesforceClient::check_credentials`]), so that a mistyped key or
//! secret is reported while the admin still has the External Client App open, not at the
//! first connection or the next refresh.

use secrecy::{ExposeSecret, SecretString};

use super::events::{EventType, Subject};
use super::{Broker, BrokerError, CredentialField, TenantId};
use crate::crypto::Binding;
use crate::salesforce::{AppCredentials, CredentialCheck, ErrorClass, SalesforceError};
use crate::store::{AppStatus, Millis, TenantAppRecord};

/// The longest consumer key or secret accepted (Salesforce's are far shorter).
const MAX_CREDENTIAL_LEN: usize = 256;

/// What the API may show of a tenant's app.
#[derive(Clone, Debug)]
pub struct AppMetadata {
    pub tenant_id: String,
    pub login_url: String,
    pub consumer_key_hint: String,
    pub status: AppStatus,
    pub status_reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl From<&TenantAppRecord> for AppMetadata {
    fn from(r: &TenantAppRecord) -> Self {
        Self {
            tenant_id: r.tenant_id.clone(),
            login_url: r.login_url.clone(),
            consumer_key_hint: r.consumer_key_hint.clone(),
            status: r.status,
            status_reason: r.status_reason.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The new credentials of a tenant's app, as submitted.
pub struct AppRegistration {
    pub consumer_key: SecretString,
    pub consumer_secret: SecretString,
    pub login_url: String,
}

/// Shows the first and last four characters of a key, enough to tell two apps apart.
fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 16 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail}")
    } else {
        "…".to_owned()
    }
}

/// Trims surrounding whitespace (pasted values often carry some) and checks the rest.
fn credential(field: &str, value: &SecretString) -> Result<SecretString, BrokerError> {
    let trimmed = value.expose_secret().trim();
    if trimmed.is_empty() {
        return Err(BrokerError::InvalidRequest(format!(
            "{field} must not be empty"
        )));
    }
    if trimmed.chars().count() > MAX_CREDENTIAL_LEN {
        return Err(BrokerError::InvalidRequest(format!(
            "{field} must be at most {MAX_CREDENTIAL_LEN} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) || trimmed.contains(' ') {
        return Err(BrokerError::InvalidRequest(format!(
            "{field} must not contain spaces or control characters"
        )));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// How long a caller waits before retrying a credential check Salesforce could not answer.
const CHECK_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Broker {
    /// Stores (or replaces) the tenant's app. Returns its metadata and whether it is new.
    /// With `verify`, the credentials are first tried at the login host and refused there
    /// (422 with the field to fix) or, when the login host cannot tell, not stored at all.
    pub async fn put_app(
        &self,
        tenant: &TenantId,
        registration: AppRegistration,
        verify: bool,
    ) -> Result<(AppMetadata, bool), BrokerError> {
        let key = credential("consumer_key", &registration.consumer_key)?;
        let secret = credential("consumer_secret", &registration.consumer_secret)?;
        let login_url = self
            .settings
            .login_hosts
            .validate_login_url(&registration.login_url)
            .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        if verify {
            self.check_credentials(&AppCredentials {
                login_url: login_url.clone(),
                client_id: key.clone(),
                client_secret: secret.clone(),
            })
            .await?;
        } else {
            tracing::info!(
                tenant = tenant.as_str(),
                "tenant app credentials stored without a check (verify=false)"
            );
        }
        let now = self.now();
        let record = TenantAppRecord {
            tenant_id: tenant.as_str().to_owned(),
            login_url,
            consumer_key_enc: self.keyring.seal(
                key.expose_secret(),
                Binding::new("tenant_apps", tenant.as_str(), "consumer_key"),
            )?,
            consumer_key_hint: key_hint(key.expose_secret()),
            consumer_secret_enc: self.keyring.seal(
                secret.expose_secret(),
                Binding::new("tenant_apps", tenant.as_str(), "consumer_secret"),
            )?,
            status: AppStatus::Active,
            status_reason: None,
            credentials_version: 1,
            created_at: now,
            updated_at: now,
        };
        // Written only if this PUT replaces credentials Salesforce refused.
        let fixed = self.event_about(
            EventType::AppCredentialsValid,
            Subject::App(tenant.as_str()),
            AppStatus::Active.as_str(),
            Some("new credentials were stored"),
        );
        let (stored, created) = self
            .store
            .put_tenant_app_with_event(&record, fixed.as_ref())
            .await?;
        self.wake_outbox();
        tracing::info!(tenant = tenant.as_str(), created, "tenant app stored");
        // The connections' cached tokens are still valid; only refreshes were held back.
        Ok((AppMetadata::from(&stored), created))
    }

    /// Asks the login host whether it knows the key and accepts the secret (the error
    /// table of `docs/salesforce.md`). Nothing about the secret reaches the error or the log:
    /// only the OAuth error code and our own words.
    async fn check_credentials(&self, credentials: &AppCredentials) -> Result<(), BrokerError> {
        let outcome = self
            .salesforce
            .check_credentials(credentials, &self.settings.callback_url)
            .await;
        tracing::info!(outcome = ?outcome.as_ref().map_err(SalesforceError::summary), "tenant app credentials checked at the login host");
        match outcome {
            Ok(CredentialCheck::Accepted) => Ok(()),
            Ok(CredentialCheck::KeyRefused) => Err(BrokerError::InvalidCredentials {
                field: CredentialField::ConsumerKey,
                detail: format!(
                    "Salesforce at {} does not know this consumer key (invalid_client_id). Copy \
                     the Consumer Key again from the External Client App (External Client App \
                     Manager → the app → Settings → OAuth Settings → Consumer Key and Secret), \
                     and check that the login URL is the My Domain of the org that created the \
                     app.",
                    credentials.login_url
                ),
            }),
            Ok(CredentialCheck::SecretRefused) => Err(BrokerError::InvalidCredentials {
                field: CredentialField::ConsumerSecret,
                detail: "Salesforce knows the consumer key but refused the consumer secret \
                         (invalid_client). Copy the Consumer Secret again from the same External \
                         Client App (External Client App Manager → the app → Settings → OAuth \
                         Settings → Consumer Key and Secret); after a secret rotation, use the \
                         new secret."
                    .to_owned(),
            }),
            Err(e) => Err(match e.class() {
                ErrorClass::Transient => BrokerError::UpstreamUnavailable {
                    reason: format!(
                        "the login host could not check the credentials, nothing was stored: {}",
                        e.summary()
                    ),
                    retry_after: CHECK_RETRY_AFTER,
                },
                _ => BrokerError::Upstream(format!(
                    "the login host gave an answer that is not Salesforce's, nothing was stored: {}",
                    e.summary()
                )),
            }),
        }
    }

    pub async fn get_app(&self, tenant: &TenantId) -> Result<AppMetadata, BrokerError> {
        Ok(AppMetadata::from(&self.tenant_app(tenant).await?))
    }

    /// Revokes every connection of the tenant at Salesforce, then deletes them and the app.
    /// With Salesforce unreachable nothing is deleted, unless `force`.
    pub async fn delete_app(&self, tenant: &TenantId, force: bool) -> Result<(), BrokerError> {
        let app = self.tenant_app(tenant).await?;
        let connections = self.store.list_connections(tenant.as_str()).await?;
        // Each connection is deleted as soon as it is revoked: if Salesforce fails midway,
        // what remains is exactly what is still live there.
        for connection in &connections {
            self.revoke_connection(connection, force).await?;
            self.delete_revoked_connection(connection, "the tenant's app was deleted")
                .await?;
        }
        self.store.delete_tenant_app(tenant.as_str()).await?;
        tracing::info!(
            tenant = app.tenant_id.as_str(),
            connections = connections.len(),
            "tenant app deleted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_shows_only_the_ends() {
        assert_eq!(key_hint("3MVG9abcdefghijklmnopXy9Q"), "3MVG…Xy9Q");
        assert_eq!(key_hint("short"), "…");
    }

    #[test]
    fn credentials_are_trimmed_and_bounded() {
        let ok = credential("consumer_key", &SecretString::from(" abc \n".to_owned()));
        assert!(matches!(ok, Ok(s) if s.expose_secret() == "abc"));
        for bad in ["", "   ", "a b", "x\u{7}y"] {
            assert!(credential("k", &SecretString::from(bad.to_owned())).is_err());
        }
        let long = "a".repeat(MAX_CREDENTIAL_LEN + 1);
        assert!(credential("k", &SecretString::from(long)).is_err());
    }
}
