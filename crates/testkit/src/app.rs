//! `TestApp`: the real service on 127.0.0.1:0 against a test database and the fake
//! Salesforce, with one method per endpoint.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use fake_salesforce::FakeSalesforce;
use reqwest::{Response, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;
use valo_oauth::app::Application;
use valo_oauth::broker::{Broker, Clock, SystemClock};
use valo_oauth::config;
use valo_oauth::crypto::Keyring;

use crate::db::TestDatabase;

pub const JWT_SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub const AUDIENCE: &str = "valo-oauth";
/// The public URL the service believes it has; tests rewrite it to the real address.
pub const PUBLIC_URL: &str = "http://valo-oauth.test";
pub const RETURN_ORIGIN: &str = "https://app.valo.test";
pub const CLIENT_ID: &str = "3MVG9fakeConsumerKey0123456789ABCDEFabcdef";
pub const CLIENT_SECRET: &str = "FAKESECRET0123456789ABCDEF0123456789abcdef";
/// The encryption key every test app shares unless told otherwise (replicas must agree).
pub const TEST_KEYS: &str = "test1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const ALL_SCOPES: &str = "apps:write connections:write connections:read tokens:read";
/// Keep-alive on (connections idle for 10 minutes are due) with the background sweeper
/// looking once an hour: the tests run the sweeps themselves.
pub const KEEPALIVE_BY_HAND: [(&str, &str); 2] = [
    ("VALO_OAUTH_KEEPALIVE_INTERVAL_SECS", "600"),
    ("VALO_OAUTH_KEEPALIVE_SWEEP_SECS", "3600"),
];

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub fake: FakeSalesforce,
    pub broker: Broker,
    /// The internal listener's base URL, when the app has one
    /// (`VALO_OAUTH_INTERNAL_LISTEN`); `base` is then the public listener.
    pub internal_base: Option<String>,
    pub encryption_keys: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The environment every test app starts with; `extra` overrides.
pub fn test_env(db: &TestDatabase, keys: &str, extra: &[(&str, &str)]) -> config::EnvMap {
    let data_dir = std::env::temp_dir().join(format!("valo-test-{}", Uuid::new_v4()));
    let mut env: BTreeMap<String, String> = [
        ("DATABASE_URL", db.url.as_str()),
        ("VALO_OAUTH_LISTEN", "127.0.0.1:0"),
        ("VALO_OAUTH_PUBLIC_URL", PUBLIC_URL),
        ("VALO_OAUTH_ENCRYPTION_KEYS", keys),
        ("VALO_OAUTH_API_JWT_SECRET", JWT_SECRET),
        (
            "VALO_OAUTH_LOGIN_HOSTS",
            "http://127.0.0.1,login.salesforce.com,*.my.salesforce.com",
        ),
        ("VALO_OAUTH_RETURN_TO_ORIGINS", RETURN_ORIGIN),
        ("VALO_OAUTH_SALESFORCE_TIMEOUT_MS", "2000"),
        ("VALO_OAUTH_REFRESH_WAIT_MS", "10000"),
        ("VALO_OAUTH_KEEPALIVE_INTERVAL_SECS", "0"),
        ("VALO_OAUTH_DATA_DIR", data_dir.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

impl TestApp {
    /// A fresh app on `db`, with its own fake Salesforce.
    pub async fn spawn(db: &TestDatabase) -> TestApp {
        let fake = FakeSalesforce::start(Default::default()).await.unwrap();
        Self::spawn_with(db, &fake, &[]).await
    }

    /// An app on `db` talking to `fake` (share both to run several replicas).
    /// [`TestApp::spawn`], then [`TestApp::connect`] for `tenant`: the app and the
    /// connection's id.
    pub async fn spawn_connected(db: &TestDatabase, tenant: &str) -> (TestApp, Uuid) {
        let app = TestApp::spawn(db).await;
        let id = app.connect(tenant).await;
        (app, id)
    }

    /// [`TestApp::spawn`] with the app of `tenant` registered.
    pub async fn spawn_registered(db: &TestDatabase, tenant: &str) -> TestApp {
        let app = TestApp::spawn(db).await;
        let put = app.put_app(tenant).await;
        assert!(put.status().is_success(), "put app: {}", put.status());
        app
    }

    pub async fn spawn_with(
        db: &TestDatabase,
        fake: &FakeSalesforce,
        extra: &[(&str, &str)],
    ) -> TestApp {
        let keys = extra
            .iter()
            .find(|(k, _)| *k == "VALO_OAUTH_ENCRYPTION_KEYS")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_else(|| TEST_KEYS.to_owned());
        if let Ok(filter) = std::env::var("TEST_LOG") {
            // Best effort: the first app of the process installs it.
            let _ = valo_oauth::telemetry::init_stderr(&filter, config::LogFormat::Pretty);
        }
        let env = test_env(db, &keys, extra);
        let settings =
            config::load(Path::new("config/none.toml"), None, &env).expect("test settings");
        fake.register_app(CLIENT_ID, CLIENT_SECRET, &settings.callback_url());
        let clock = Arc::new(FakeTime(fake.clone()));
        let app = Application::build_with_clock(settings, clock)
            .await
            .expect("app builds");
        let addr = app.local_addr().unwrap();
        let internal_base = app
            .internal_addr()
            .map(|internal| format!("http://{}", internal.unwrap()));
        let broker = app.broker().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let client = http_client();
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client,
            fake: fake.clone(),
            broker,
            internal_base,
            encryption_keys: keys,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Moves time forward for this app, every other app on the same fake, and the fake
    /// itself: tokens, states and back-offs expire as if `by` had passed, without sleeping.
    pub fn advance(&self, by: std::time::Duration) {
        self.fake.advance(by);
    }

    /// Stops serving (graceful) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn token(&self, scope: &str, tenant: Option<&str>) -> String {
        mint(JWT_SECRET, scope, tenant, 3600)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn put_app(&self, tenant: &str) -> Response {
        self.put_app_with(tenant, CLIENT_ID, CLIENT_SECRET).await
    }

    pub async fn put_app_with(&self, tenant: &str, key: &str, secret: &str) -> Response {
        let login = self.fake.base_url();
        let body = json!({"consumer_key": key, "consumer_secret": secret, "login_url": login});
        self.put_app_json(tenant, "", &body).await
    }

    /// PUTs `body` as the app of `tenant` (`query` is "" or e.g. `?verify=false`).
    pub async fn put_app_json(&self, tenant: &str, query: &str, body: &Value) -> Response {
        self.client
            .put(self.url(&format!("/v1/tenants/{tenant}/salesforce-app{query}")))
            .bearer_auth(self.token(ALL_SCOPES, None))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn start_authorization(&self, tenant: &str, body: Value) -> Response {
        self.client
            .post(self.url(&format!("/v1/tenants/{tenant}/authorizations")))
            .bearer_auth(self.token(ALL_SCOPES, None))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Starts a flow and returns the authorization URL.
    pub async fn authorization_url(&self, tenant: &str, body: Value) -> String {
        let response = self.start_authorization(tenant, body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["authorization_url"].as_str().unwrap().to_owned()
    }

    /// Follows a callback URL (as Salesforce sent it) to this app.
    pub async fn callback(&self, callback_url: &str) -> Response {
        let rewritten = callback_url.replacen(PUBLIC_URL, &self.base, 1);
        assert_ne!(
            rewritten, callback_url,
            "callback URL points elsewhere: {callback_url}"
        );
        self.client.get(rewritten).send().await.unwrap()
    }

    /// The full browser flow with a return_to: returns the callback's redirect target.
    pub async fn authorize(&self, tenant: &str) -> reqwest::Url {
        let url = self
            .authorization_url(
                tenant,
                json!({"return_to": format!("{RETURN_ORIGIN}/done")}),
            )
            .await;
        let callback = self.fake.approve(&url).await.expect("fake approves");
        let response = self.callback(&callback).await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "{:?}",
            response.text().await
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        reqwest::Url::parse(&location).unwrap()
    }

    /// Registers the app (if needed) and connects; returns the connection id.
    pub async fn connect(&self, tenant: &str) -> Uuid {
        let put = self.put_app(tenant).await;
        assert!(put.status().is_success(), "put app: {}", put.status());
        connected_id(&self.authorize(tenant).await)
    }

    pub async fn access_token(&self, tenant: &str, id: Uuid, body: Option<Value>) -> Response {
        let mut request = self
            .client
            .post(self.url(&format!(
                "/v1/tenants/{tenant}/connections/{id}/access-token"
            )))
            .bearer_auth(self.token("tokens:read", Some(tenant)));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// The body of a successful access-token call without a request body.
    pub async fn access_token_body(&self, tenant: &str, id: Uuid) -> Value {
        let response = self.access_token(tenant, id, None).await;
        response.json().await.unwrap()
    }

    /// The connections of `tenant` (`GET /v1/tenants/{tenant}/connections`, which must
    /// answer 200).
    pub async fn connections(&self, tenant: &str) -> Vec<Value> {
        let path = format!("/v1/tenants/{tenant}/connections");
        let (status, body) = self.get_json(&path, "connections:read").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["connections"].as_array().unwrap().clone()
    }

    pub async fn get_json(&self, path: &str, scope: &str) -> (StatusCode, Value) {
        let response = self.send_as(reqwest::Method::GET, path, scope).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A connection's view: `GET /v1/tenants/{tenant}/connections/{id}` with scope
    /// `connections:read`.
    pub async fn get_connection(
        &self,
        tenant: &str,
        id: impl std::fmt::Display,
    ) -> (StatusCode, Value) {
        let path = format!("/v1/tenants/{tenant}/connections/{id}");
        self.get_json(&path, "connections:read").await
    }

    /// `GET path` without credentials.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The body of `GET path` without credentials (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    /// `POST path` without a body, with a token of `scope` (no tenant claim).
    pub async fn post_as(&self, path: &str, scope: &str) -> Response {
        self.send_as(reqwest::Method::POST, path, scope).await
    }

    pub async fn delete(&self, path: &str, scope: &str) -> Response {
        self.send_as(reqwest::Method::DELETE, path, scope).await
    }

    /// `method path` without a body, with a token of `scope` (no tenant claim).
    pub async fn send_as(&self, method: reqwest::Method, path: &str, scope: &str) -> Response {
        let request = self.client.request(method, self.url(path));
        request
            .bearer_auth(self.token(scope, None))
            .send()
            .await
            .unwrap()
    }
}

/// The apps' clock: the wall clock moved by the fake Salesforce's offset, so that
/// [`FakeSalesforce::advance`] moves the service and Salesforce together.
struct FakeTime(FakeSalesforce);

impl Clock for FakeTime {
    fn now_ms(&self) -> i64 {
        let offset = i64::try_from(self.0.time_offset().as_millis()).unwrap_or(i64::MAX);
        SystemClock.now_ms().saturating_add(offset)
    }
}

/// An HTTP client that does not follow redirects (the tests look at them).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Seconds from now until a connection's `access_token_expires_at` (RFC 3339).
pub fn access_expires_in(connection: &Value) -> i64 {
    let at = time::OffsetDateTime::parse(
        connection["access_token_expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (at - time::OffsetDateTime::now_utc()).whole_seconds()
}

/// The connection id of a callback's redirect (`status=connected&connection_id=…`);
/// panics on any other outcome.
pub fn connected_id(location: &reqwest::Url) -> Uuid {
    let pairs: BTreeMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(
        pairs.get("status").map(String::as_str),
        Some("connected"),
        "{location}"
    );
    Uuid::parse_str(&pairs["connection_id"]).unwrap()
}

/// An HS256 API token.
pub fn mint(secret: &str, scope: &str, tenant: Option<&str>, ttl_secs: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims =
        json!({"aud": AUDIENCE, "exp": now + ttl_secs, "iat": now, "scope": scope, "sub": "test"});
    if let Some(t) = tenant {
        claims["tenant"] = json!(t);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A fresh encryption key spec.
pub fn fresh_keys() -> String {
    Keyring::generate_key_spec("test1")
        .expose_secret()
        .to_owned()
}
