//! Reading and deleting connections. Deleting revokes at Salesforce first (RFC 7009):
//! revoking the refresh token revokes its access tokens too.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::events::{EventType, Subject};
use super::{Broker, BrokerError, SecretColumn, TenantId};
use crate::salesforce::ErrorClass;
use crate::store::ConnectionRecord;
pub use crate::store::{Connection, ConnectionStatus};

impl Broker {
    pub async fn list_connections(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<Connection>, BrokerError> {
        let rows = self.store.list_connections(tenant.as_str()).await?;
        Ok(rows.into_iter().map(|row| row.connection).collect())
    }

    pub async fn get_connection(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Connection, BrokerError> {
        Ok(self.connection_record(tenant, id).await?.connection)
    }

    /// The stored row, token material included (for this layer only).
    pub(super) async fn connection_record(
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
        let connection = self.connection_record(tenant, id).await?;
        self.revoke_connection(&connection, force).await?;
        self.delete_revoked_connection(&connection, "the connection was deleted")
            .await?;
        tracing::info!(tenant = tenant.as_str(), connection = %id, "connection deleted");
        Ok(())
    }

    /// Deletes a connection whose tokens were revoked, with its `connection.deleted` event
    /// (one transaction), and forgets its cached token.
    pub(super) async fn delete_revoked_connection(
        &self,
        record: &ConnectionRecord,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let event = self.event_about(
            EventType::ConnectionDeleted,
            Subject::Connection(record),
            "deleted",
            Some(reason),
        );
        self.store
            .delete_connection_with_event(
                &record.connection.tenant_id,
                record.connection.id,
                event.as_ref(),
            )
            .await?;
        self.wake_outbox();
        self.tokens.forget(record.connection.id);
        Ok(())
    }

    /// Revokes a connection's refresh token. Failures stop the caller unless `force`.
    pub(super) async fn revoke_connection(
        &self,
        record: &ConnectionRecord,
        force: bool,
    ) -> Result<(), BrokerError> {
        if record.connection.status == ConnectionStatus::Revoked {
            return Ok(());
        }
        let token = match self.open_connection_secret(record, SecretColumn::RefreshToken) {
            Ok(token) => token,
            // The key that sealed it has left the ring (or the value is damaged): there is
            // nothing to revoke with. A forced delete goes on; the token stays valid at
            // Salesforce until it expires or is revoked there.
            Err(e) if force => {
                tracing::warn!(connection = %record.connection.id, error = %e, "refresh token cannot be decrypted; nothing to revoke it with; deleting anyway (force)");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(connection = %record.connection.id, error = %e, "refresh token cannot be decrypted, so it cannot be revoked; configure its key again, or delete with force=true");
                return Err(e);
            }
        };
        match self
            .salesforce
            .revoke(&record.connection.login_url, &token)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if force => {
                tracing::warn!(connection = %record.connection.id, error = %e.summary(), "revocation failed; deleting anyway (force)");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(connection = %record.connection.id, error = %e.summary(), "revocation failed; connection kept");
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
            tracing::warn!(connection = %replaced.connection.id, error = %e, "could not revoke the replaced refresh token");
        }
    }
}
