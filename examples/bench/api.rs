//! The service's API as the Valo backend calls it: API tokens (the test kit's `mint`), the
//! app registration, the authorization flow through the fake Salesforce, and the
//! access-token request.

use std::collections::BTreeMap;
use std::time::Duration;

use fake_salesforce::FakeSalesforce;
use serde_json::{Value, json};
use uuid::Uuid;
use valo_testkit::app::{
    ALL_SCOPES, CLIENT_ID, CLIENT_SECRET, JWT_SECRET, PUBLIC_URL, RETURN_ORIGIN,
};

/// The one tenant of every section.
pub const TENANT: &str = "bench";

/// An HS256 API token with `scope`, confined to [`TENANT`] when `tenant` (valid 1 hour).
pub fn jwt(scope: &str, tenant: bool) -> String {
    valo_testkit::app::mint(JWT_SECRET, scope, tenant.then_some(TENANT), 3600)
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn token_path(id: Uuid) -> String {
    format!("/v1/tenants/{TENANT}/connections/{id}/access-token")
}

/// PUTs [`TENANT`]'s External Client App (the test kit's credentials) with `login_url`;
/// the service checks the credentials there first unless `verify` is false (a login host
/// where nothing listens).
pub async fn put_app(client: &reqwest::Client, base: &str, login_url: &str, verify: bool) {
    let put = client
        .put(format!(
            "{base}/v1/tenants/{TENANT}/salesforce-app?verify={verify}"
        ))
        .bearer_auth(jwt(ALL_SCOPES, false))
        .json(&json!({"consumer_key": CLIENT_ID, "consumer_secret": CLIENT_SECRET, "login_url": login_url}))
        .send()
        .await
        .unwrap();
    assert!(
        put.status().is_success(),
        "put app: {} {:?}",
        put.status(),
        put.text().await
    );
}

/// Who approves at the fake: (18-character org id, 18-character user id, username).
pub type FakeUser<'a> = (&'a str, &'a str, &'a str);

/// Connects one org user of [`TENANT`] (whose app is registered) through the real flow:
/// POST an authorization, approve it at the fake (as `user`, or as the fake's current user
/// when `None`), GET the callback. The fake's current user is global state, so switching
/// it and approving happen under `approvals`; the rest of the flow runs concurrently.
/// Returns the connection id.
pub async fn connect_user(
    client: &reqwest::Client,
    base: &str,
    fake: &FakeSalesforce,
    user: Option<FakeUser<'_>>,
    approvals: &tokio::sync::Mutex<()>,
) -> Uuid {
    let started = client
        .post(format!("{base}/v1/tenants/{TENANT}/authorizations"))
        .bearer_auth(jwt(ALL_SCOPES, false))
        .json(&json!({"return_to": format!("{RETURN_ORIGIN}/done")}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), reqwest::StatusCode::CREATED);
    let body: Value = started.json().await.unwrap();
    let authorize_url = body["authorization_url"].as_str().unwrap();
    let callback = {
        let _approving = approvals.lock().await;
        if let Some((org_id, user_id, username)) = user {
            fake.set_user(org_id, user_id, username);
        }
        fake.approve(authorize_url)
            .await
            .expect("the fake approves")
    };
    // The service believes it is at PUBLIC_URL; the browser's redirect goes to it.
    let callback = callback.replacen(PUBLIC_URL, base, 1);
    let response = client.get(&callback).send().await.unwrap();
    assert_eq!(
        response.status(),
        reqwest::StatusCode::SEE_OTHER,
        "callback: {:?}",
        response.text().await
    );
    let location = reqwest::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    valo_testkit::app::connected_id(&location)
}

/// Registers the app and connects the fake's current user; returns the connection id.
pub async fn connect_org(client: &reqwest::Client, base: &str, fake: &FakeSalesforce) -> Uuid {
    put_app(client, base, &fake.base_url(), true).await;
    connect_user(client, base, fake, None, &tokio::sync::Mutex::new(())).await
}

/// POSTs the access-token endpoint; returns (status, access_token if 200).
pub async fn fetch_token(
    client: &reqwest::Client,
    url: &str,
    jwt: &str,
    body: &Value,
) -> (u16, Option<String>) {
    match client.post(url).bearer_auth(jwt).json(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["access_token"].as_str().map(str::to_owned))
        }
        Err(_) => (0, None),
    }
}

/// One access-token request for the token path at `url` before a run, which must answer
/// 200 (`what` names the run in the failure); the token, if any.
pub async fn check_token(
    client: &reqwest::Client,
    url: &str,
    jwt: &str,
    what: &str,
) -> Option<String> {
    let (status, token) = fetch_token(client, url, jwt, &json!({"min_ttl_seconds": 60})).await;
    assert_eq!(status, 200, "access-token check request{what}");
    token
}

/// The service's Prometheus text, as `name{labels}` → value.
pub async fn metrics(client: &reqwest::Client, base: &str) -> BTreeMap<String, f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Fetches each connection's token through the API, `concurrency` at a time, and counts
/// the answers that carried the expected token.
pub async fn fetch_each(
    client: &reqwest::Client,
    base: &str,
    expected: &[(Uuid, String)],
    concurrency: usize,
) -> usize {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jwt = Arc::new(jwt("tokens:read", true));
    let expected = Arc::new(expected.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, jwt, expected, next, ok) = (
            client.clone(),
            jwt.clone(),
            expected.clone(),
            next.clone(),
            ok.clone(),
        );
        let base = base.to_owned();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, token)) = expected.get(i) else {
                    break;
                };
                let url = format!("{base}{}", token_path(*id));
                let (status, got) = fetch_token(&client, &url, &jwt, &json!({})).await;
                if status == 200 && got.as_deref() == Some(token.as_str()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.unwrap();
    }
    ok.load(Ordering::Relaxed)
}
