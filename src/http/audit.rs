//! `GET /v1/tenants/{tenant}/audit`: the tenant's audit trail, oldest first, a page at a
//! time (`limit`, and `cursor` = the previous page's `next_cursor`).

use axum::Router;
use axum::extract::RawQuery;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::{Granted, needs};
use super::extract::rfc3339;
use super::openapi::{StoreErrors, TenantPath};
use super::problem::Problem;
use super::{ApiResult, AppState, ok};
use crate::broker::audit::AuditFilter;
use crate::store::{AuditEntry, Millis};

/// The default and the largest page.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub fn router() -> Router<AppState> {
    routes().into()
}

/// The routes with their OpenAPI operations.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// The query of the audit trail ([`filter`] parses it strictly).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the handler parses the raw query.
struct AuditQuery {
    /// Only this connection's entries.
    #[param(value_type = Option<String>, format = Uuid)]
    connection_id: Option<Uuid>,
    /// Entries at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Entries before this time (RFC 3339, exclusive).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Entries per page, 1 to 1000.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (opaque).
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AuditEntry)]
struct EntryView {
    /// The start of the minute for `token_served` and `token_refreshed` (aggregated), else
    /// the moment of the action.
    #[schema(value_type = super::openapi::Timestamp)]
    at: String,
    /// The API token's `sub`; `valo-oauth:keepalive` for refreshes of the keep-alive
    /// sweeper; `salesforce:<user id>` for `connection_created` (the callback carries no API
    /// token: the Salesforce user who consented).
    actor: String,
    /// `token_served`, `token_refreshed`, `connection_created`, `connection_deleted`,
    /// `app_updated` or `app_deleted`.
    action: String,
    /// Absent for app actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = String, format = Uuid)]
    connection_id: Option<String>,
    /// How many times the action happened in this entry (token reads are counted per actor,
    /// connection and minute; one minute may grow until a little after it ends, as replicas
    /// flush).
    #[schema(minimum = 1)]
    count: i64,
    /// The `x-request-id` of the request, for changes (absent for aggregated reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = String)]
    request_id: Option<String>,
}

impl From<AuditEntry> for EntryView {
    fn from(e: AuditEntry) -> Self {
        Self {
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            connection_id: e.connection_id.map(|id| id.to_string()),
            count: e.count,
            request_id: e.request_id,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = AuditPage)]
struct Page {
    /// Oldest first (by `at`, then insertion).
    entries: Vec<EntryView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// An RFC 3339 timestamp (`since`, `until`) as Unix milliseconds.
fn timestamp(name: &str, raw: &str) -> Result<Millis, Problem> {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| {
            Problem::invalid_request(format!(
                "{name} must be an RFC 3339 timestamp such as 2026-12-04T10:00:00Z"
            ))
        })
}

/// The query string: each parameter at most once, none unknown.
fn filter(query: Option<&str>) -> Result<AuditFilter, Problem> {
    let mut filter = AuditFilter {
        connection_id: None,
        since: None,
        until: None,
        cursor: None,
        limit: DEFAULT_LIMIT,
    };
    let mut seen = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if seen.contains(&name) {
            return Err(Problem::invalid_request(format!(
                "{name} must be given at most once"
            )));
        }
        match name.as_ref() {
            "connection_id" => {
                filter.connection_id = Some(Uuid::parse_str(&value).map_err(|_| {
                    Problem::invalid_request("connection_id must be a connection's UUID")
                })?);
            }
            "since" => filter.since = Some(timestamp("since", &value)?),
            "until" => filter.until = Some(timestamp("until", &value)?),
            "cursor" => filter.cursor = Some(value.to_string()),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Problem::invalid_request(format!(
                            "limit must be a whole number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            other => {
                // Not echoed verbatim beyond a short, printable prefix.
                let shown: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
                return Err(Problem::invalid_request(format!(
                    "unknown query parameter {shown:?} (known: connection_id, since, until, cursor, limit)"
                )));
            }
        }
        seen.push(name);
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since >= until
    {
        return Err(Problem::invalid_request("since must be before until"));
    }
    Ok(filter)
}

/// Read the tenant's audit trail
///
/// Who read which connection's access token (`token_served`, counted per actor, connection
/// and minute), which reads caused a refresh (`token_refreshed`), and who created or deleted
/// connections and updated or deleted the app. Entries are written off the request path,
/// within 10 s (`audit_flush_ms`), and kept for `audit_retention_days` (90). Paginated:
/// follow `next_cursor` until it is null. A token confined to another tenant gets 403.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/audit", operation_id = "listAudit", tag = "audit",
    params(TenantPath, AuditQuery),
    responses(
        (status = 200, description = "One page of entries.", body = Page),
        StoreErrors,
    ),
    security(("bearerAuth" = ["audit:read"])),
)]
async fn list(
    Granted { broker, target, .. }: Granted<needs::AuditRead>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let page = broker
        .audit_trail(&target.tenant, filter(query.as_deref())?)
        .await?;
    ok(Page {
        entries: page.entries.into_iter().map(EntryView::from).collect(),
        next_cursor: page.next_cursor,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_query_is_parsed_strictly() {
        let f = filter(Some(
            "since=2026-12-04T10:00:00Z&until=2026-12-04T12:00:00%2B01:00&limit=5",
        ))
        .unwrap();
        assert_eq!(f.since, Some(1_796_378_400_000));
        assert_eq!(f.limit, 5);
        for bad in [
            "since=yesterday",
            "until=2026-13-01T00:00:00Z",
            "limit=0",
            "limit=1001",
            "connection_id=nope",
            "since=2026-12-04T10:00:00Z&since=2026-12-04T10:00:00Z",
            "since=2026-12-04T10:00:00Z&until=2026-12-04T10:00:00Z",
            "colour=blue",
        ] {
            assert!(filter(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(filter(None).unwrap().limit, DEFAULT_LIMIT);
    }
}
