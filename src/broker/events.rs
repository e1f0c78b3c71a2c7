//! The webhook events the Valo backend receives, and how each is made from the state change
//! it reports. The event is handed to the store with that change, which writes both in one
//! transaction (the outbox, [`super::outbox`]); with no webhook URL configured no event is
//! made at all.
//!
//! The body follows the Standard Webhooks specification ("Standard Webhooks",
//! https://www.standardwebhooks.com/): `{"type", "timestamp", "data"}`. It names the
//! connection and what happened to it — never a token, a code or a secret.

use serde::Serialize;
use uuid::Uuid;

use super::audit::{Actor, AuditAction};
use super::{Broker, TenantId, rfc3339};
use crate::store::{ConnectionRecord, ConnectionStatus, Millis, NewEvent, SavedConnection};

/// Every event type the Valo backend may receive (a contract: keep the names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A flow completed for a Salesforce user not connected before.
    ConnectionCreated,
    /// A flow completed for a connection that exists (the same user of the same org
    /// connected again): its tokens are new, its status is `active`.
    ConnectionReauthorized,
    /// Salesforce refused the refresh token for good: a person must connect again.
    ConnectionNeedsReauthorization,
    /// The connection was deleted (its tokens revoked first).
    ConnectionDeleted,
    /// Salesforce refused the tenant app's consumer key or secret.
    AppCredentialsInvalid,
    /// A PUT replaced credentials that had been refused: the connections serve again.
    AppCredentialsValid,
}

impl EventType {
    pub const ALL: [Self; 6] = [
        Self::ConnectionCreated,
        Self::ConnectionReauthorized,
        Self::ConnectionNeedsReauthorization,
        Self::ConnectionDeleted,
        Self::AppCredentialsInvalid,
        Self::AppCredentialsValid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "connection.created",
            Self::ConnectionReauthorized => "connection.reauthorized",
            Self::ConnectionNeedsReauthorization => "connection.needs_reauthorization",
            Self::ConnectionDeleted => "connection.deleted",
            Self::AppCredentialsInvalid => "app.credentials_invalid",
            Self::AppCredentialsValid => "app.credentials_valid",
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: Data<'a>,
}

/// `connection_id`, `org_id` and `user_id` are null in app events; every key is present so
/// that receivers can use one type.
#[derive(Serialize)]
struct Data<'a> {
    tenant_id: &'a str,
    connection_id: Option<String>,
    org_id: Option<&'a str>,
    user_id: Option<&'a str>,
    /// The connection's status after the event (`active`, `needs_reauthorization`,
    /// `deleted`), or the app's (`active`, `credentials_invalid`).
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// What an event is about.
#[derive(Clone, Copy)]
pub(super) enum Subject<'a> {
    /// A connection, as its row is now.
    Connection(&'a ConnectionRecord),
    /// A tenant's app (by tenant id).
    App(&'a str),
}

impl<'a> Data<'a> {
    /// The data of an event about `subject`, now in `status`, and the event's ordering key:
    /// a connection's events are delivered in order, and so are the app events of a tenant.
    fn about(subject: Subject<'a>, status: &'a str, reason: Option<&'a str>) -> (String, Self) {
        match subject {
            Subject::Connection(row) => (
                row.connection.id.to_string(),
                Data {
                    tenant_id: &row.connection.tenant_id,
                    connection_id: Some(row.connection.id.to_string()),
                    org_id: Some(&row.connection.org_id),
                    user_id: Some(&row.connection.user_id),
                    status,
                    reason,
                },
            ),
            Subject::App(tenant_id) => (
                format!("app:{tenant_id}"),
                Data {
                    tenant_id,
                    connection_id: None,
                    org_id: None,
                    user_id: None,
                    status,
                    reason,
                },
            ),
        }
    }
}

fn event(kind: EventType, ordering_key: String, data: Data<'_>, now: Millis) -> NewEvent {
    let tenant_id = data.tenant_id.to_owned();
    let body = Body {
        kind: kind.as_str(),
        timestamp: rfc3339(now),
        data,
    };
    NewEvent {
        // Svix's form: a prefix that says what the id names.
        id: format!("msg_{}", Uuid::new_v4().simple()),
        tenant_id,
        ordering_key,
        event_type: kind.as_str(),
        // Serialising plain strings cannot fail.
        payload: serde_json::to_string(&body).unwrap_or_default(),
        created_at: now,
    }
}

impl Broker {
    /// Whether state changes write events (a webhook URL is configured).
    pub(super) fn webhooks_enabled(&self) -> bool {
        self.outbox.is_some()
    }

    /// The event reporting `kind` of `subject`, now in `status`; None without webhooks.
    pub(super) fn event_about(
        &self,
        kind: EventType,
        subject: Subject<'_>,
        status: &str,
        reason: Option<&str>,
    ) -> Option<NewEvent> {
        self.webhooks_enabled().then(|| {
            let (ordering_key, data) = Data::about(subject, status, reason);
            event(kind, ordering_key, data, self.now())
        })
    }

    /// The event of a completed flow: a new connection, or an existing one authorized again.
    pub(super) fn flow_event(&self, row: &ConnectionRecord, existed: bool) -> Option<NewEvent> {
        let kind = if existed {
            EventType::ConnectionReauthorized
        } else {
            EventType::ConnectionCreated
        };
        let status = ConnectionStatus::Active.as_str();
        self.event_about(kind, Subject::Connection(row), status, None)
    }

    /// After a flow's save: wakes the outbox, and audits a new connection (by the Salesforce
    /// user who consented: the callback carries no API token).
    pub(super) fn flow_completed(&self, tenant: &TenantId, saved: &SavedConnection, user_id: &str) {
        self.wake_outbox();
        if saved.replaced.is_none() {
            self.audit(
                &Actor::salesforce_user(user_id),
                tenant,
                AuditAction::ConnectionCreated,
                Some(saved.connection.connection.id),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bodies_have_the_documented_shape() {
        let subject = Subject::App("acme");
        let (key, data) = Data::about(subject, "credentials_invalid", Some("invalid_client"));
        assert_eq!(key, "app:acme");
        let e = event(EventType::AppCredentialsInvalid, key, data, 0);
        let body: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "app.credentials_invalid",
                "timestamp": "1970-01-01T00:00:00.000Z",
                "data": {"tenant_id": "acme", "connection_id": null, "org_id": null,
                         "user_id": null, "status": "credentials_invalid",
                         "reason": "invalid_client"}
            })
        );
        assert!(e.id.starts_with("msg_"));
    }
}
