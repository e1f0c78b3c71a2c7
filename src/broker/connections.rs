//! Reading and deleting connections. Deleting revokes at Salesforce first (RFC 7009):
//! revoking the refresh token revokes its access tokens too.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::{Broker, BrokerError, SecretColumn, TenantId};
use crate::salesforce::ErrorClass;
use crate::store::{ConnectionRecord, ConnectionStatus};

impl Broker {
    pub async fn list_connections(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        Ok(self.store.list_connections(tenant.as_str()).await?)
    }

    pub async fn get_connection(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<ConnectionRecord, BrokerError> {
        self.store
            .get_connection(tenant.as_str(), id)
            .await?
            .ok_or(BrokerError::NotFound("no such connection for this tenant"))
    }

    /// Revokes the connection's refresh token at Salesforce, then deletes it. With
    /// Salesforce unreachable the connection is kept (503) unless `force`.
    pub async fn delete_connection(
        &self,
        tenant: &TenantId,
        id: Uuid,
        force: bool,
    ) -> Result<(), BrokerError> {
        let connection = self.get_connection(tenant, id).await?;
        self.revoke_connection(&connection, force).await?;
        self.store.delete_connection(tenant.as_str(), id).await?;
        self.tokens.forget(id);
        tracing::info!(tenant = tenant.as_str(), connection = %id, "connection deleted");
        Ok(())
    }

    /// Revokes a connection's refresh token. Failures stop the caller unless `force`.
    pub(super) async fn revoke_connection(
        &self,
        connection: &ConnectionRecord,
        force: bool,
    ) -> Result<(), BrokerError> {
        if connection.status == ConnectionStatus::Revoked {
            return Ok(());
        }
        let token = self.open_connection_secret(connection, SecretColumn::RefreshToken)?;
        match self.salesforce.revoke(&connection.login_url, &token).await {
            Ok(()) => Ok(()),
            Err(e) if force => {
                tracing::warn!(connection = %connection.id, error = %e.summary(), "revocation failed; deleting anyway (force)");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(connection = %connection.id, error = %e.summary(), "revocation failed; connection kept");
                Err(match e.class() {
                    ErrorClass::Transient => BrokerError::UpstreamUnavailable {
                        reason: e.summary(),
                        retry_after: Duration::from_secs(30),
                    },
                    _ => BrokerError::Upstream(e.summary()),
                })
            }
        }
    }

    /// Best effort: revokes the refresh token a re-authorization replaced (unless
    /// Salesforce handed the same one out again).
    pub(super) async fn revoke_replaced_token(
        &self,
        replaced: &ConnectionRecord,
        new_refresh_token: &SecretString,
    ) {
        let old = self.open_connection_secret(replaced, SecretColumn::RefreshToken);
        if let Ok(old) = &old
            && bool::from(
                old.expose_secret()
                    .as_bytes()
                    .ct_eq(new_refresh_token.expose_secret().as_bytes()),
            )
        {
            return;
        }
        if let Err(e) = self.revoke_connection(replaced, false).await {
            tracing::warn!(connection = %replaced.id, error = %e, "could not revoke the replaced refresh token");
        }
    }
}
