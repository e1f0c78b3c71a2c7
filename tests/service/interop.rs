//! Interoperability: the whole flow against an independent OAuth 2.0 server — Authlib,
//! configured with Salesforce's paths and fields (`tests/interop/server.py`) — instead of the
//! project's own fake. Authlib checks PKCE (S256), client_secret_post (Basic refused),
//! single-use codes, redirect_uri binding and refresh-token rotation itself.
//!
//! The server runs in a virtualenv: `python3 -m venv target/interop-venv &&
//! target/interop-venv/bin/pip install -r tests/interop/requirements.txt` (`.ci/run` does
//! this). The interpreter is `VALO_OAUTH_INTEROP_PYTHON`, else
//! `target/interop-venv/bin/python`. Without it the test is skipped, except under `CI=true`
//! where it fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use valo_testkit::app::{PUBLIC_URL, RETURN_ORIGIN, TestApp};

const CLIENT_ID: &str = "3MVG9interopConsumerKey0123456789ABCDEFabcdefXYZ";
const CLIENT_SECRET: &str = "INTEROPSECRET0123456789ABCDEF0123456789abcdefXYZ";
/// The ids `server.py` puts in its identity URL, in their 18-character form.
const ORG_ID: &str = "00D5g000004XyZaEAK";
const USER_ID: &str = "0055g00000AbCdEAAV";
/// The server's access-token lifetime, told by introspection (server.py).
const SERVER_TOKEN_LIFETIME_SECS: i64 = 7200;
/// What the service assumes when introspection fails: different, to tell the two apart.
const ASSUMED_LIFETIME_SECS: &str = "600";

/// The Authlib server, a child process killed (and reaped) on drop.
struct InteropServer {
    child: Child,
    /// Held open: the server exits when its standard input closes.
    _stdin: Option<ChildStdin>,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for InteropServer {
    fn drop(&mut self) {
        valo_testkit::process::kill_and_reap(&mut self.child);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The interpreter of the virtualenv holding Authlib.
fn python() -> PathBuf {
    match std::env::var_os("VALO_OAUTH_INTEROP_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python"),
    }
}

/// The test runs only when the build was told where the server's Python is (see
/// `build.rs`): a server that then cannot start is a failure, with the way to set it up.
fn unavailable(why: &str) -> ! {
    let help = "set up the server with: python3 -m venv target/interop-venv && \
                target/interop-venv/bin/pip install -r tests/interop/requirements.txt \
                and point VALO_OAUTH_INTEROP_PYTHON at target/interop-venv/bin/python";
    panic!("the interop OAuth server cannot run: {why}; {help}");
}

impl InteropServer {
    /// Starts `server.py` for one client and waits for its `LISTENING` line.
    async fn start(redirect_uri: &str) -> InteropServer {
        let python = python();
        if !python.exists() {
            unavailable(&format!("no Python interpreter at {}", python.display()));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/server.py");
        let log = std::env::temp_dir().join(format!("valo-interop-{}.log", Uuid::new_v4()));
        let log_file = std::fs::File::create(&log).unwrap();
        let spawned = Command::new(&python)
            .arg(&script)
            .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
            .args(["--redirect-uri", redirect_uri])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => unavailable(&format!("cannot run {}: {e}", python.display())),
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap();
        let base = match line {
            Ok(Some(line)) if line.starts_with("LISTENING http://") => {
                line["LISTENING ".len()..].trim().to_owned()
            }
            other => {
                valo_testkit::process::kill_and_reap(&mut child);
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                let _ = std::fs::remove_file(&log);
                unavailable(&format!(
                    "server.py did not start (first line {other:?}); its stderr:\n{stderr}"
                ));
            }
        };
        let http = valo_testkit::app::http_client();
        InteropServer {
            child,
            _stdin: stdin,
            base,
            log,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn counters(&self) -> Value {
        let response = self
            .http
            .get(self.url("/debug/counters"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Follows an authorization URL like a browser whose user approves: returns the
    /// `Location` of the 302 back to the redirect URI.
    async fn approve(&self, authorization_url: &str) -> String {
        let response = self.http.get(authorization_url).send().await.unwrap();
        let (status, location) = (response.status(), location(&response));
        assert_eq!(
            status,
            StatusCode::FOUND,
            "authorize answered {status}: {:?}",
            response.text().await
        );
        location.expect("a Location header")
    }

    async fn token_request(&self, form: &[(&str, &str)], basic: bool) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.url("/services/oauth2/token"))
            .form(form);
        if basic {
            request = request.basic_auth(CLIENT_ID, Some(CLIENT_SECRET));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Server log for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `Location` header of a response, if any.
fn location(response: &reqwest::Response) -> Option<String> {
    let location = response.headers().get("location")?;
    Some(location.to_str().unwrap().to_owned())
}

/// A PKCE verifier (RFC 7636 §4.1) starting with `prefix`, and the server's authorization
/// URL for it with `state`.
fn pkce_authorization(
    server: &InteropServer,
    redirect_uri: &str,
    prefix: &str,
    state: &str,
) -> (String, reqwest::Url) {
    let (a, b) = (Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let verifier = format!("{prefix}-verifier-{a}-{b}");
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut authorize = reqwest::Url::parse(&server.url("/services/oauth2/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", state)
        .append_pair("scope", "api refresh_token offline_access");
    (verifier, authorize)
}

fn query(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn millis(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

async fn access_token(app: &TestApp, tenant: &str, id: Uuid, rejected: Option<&str>) -> Value {
    let body = rejected.map(|t| json!({ "rejected_token": t }));
    let response = app.access_token(tenant, id, body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "access-token: {body}");
    body
}

/// The server must really enforce the protocol, or the flow test proves nothing: a wrong
/// PKCE verifier, HTTP Basic client authentication and a reused code are refused, while the
/// same code with the right verifier and client_secret_post works once.
async fn server_enforces_the_protocol(server: &InteropServer, redirect_uri: &str) {
    let (verifier, authorize) =
        pkce_authorization(server, redirect_uri, "interop", "negative-check");
    let callback = server.approve(authorize.as_str()).await;
    let pairs = query(&callback);
    assert_eq!(pairs["state"], "negative-check");
    let code = pairs["code"].clone();

    let wrong = format!("{verifier}x");
    for (case, verifier, redirect_uri, basic, error) in [
        (
            "wrong verifier",
            &wrong,
            redirect_uri,
            false,
            "invalid_grant",
        ),
        (
            "Basic auth must be refused",
            &verifier,
            redirect_uri,
            true,
            "invalid_client",
        ),
        (
            "other redirect_uri",
            &verifier,
            "https://elsewhere.test/cb",
            false,
            "invalid_grant",
        ),
    ] {
        let (status, body) = exchange(server, &code, verifier, redirect_uri, basic).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(body["error"], error, "{case}: {body}");
    }

    let (status, body) = exchange(server, &code, &verifier, redirect_uri, false).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "right verifier with client_secret_post: {body}"
    );
    assert!(
        body.get("expires_in").is_none(),
        "Salesforce sends no expires_in: {body}"
    );

    let (status, body) = exchange(server, &code, &verifier, redirect_uri, false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "reused code: {body}");
    assert_eq!(body["error"], "invalid_grant", "reused code: {body}");
}

/// grant_type=authorization_code, with client_secret_post or (`basic`) HTTP Basic.
async fn exchange(
    server: &InteropServer,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
    basic: bool,
) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    if !basic {
        form.push(("client_id", CLIENT_ID));
        form.push(("client_secret", CLIENT_SECRET));
    }
    server.token_request(&form, basic).await
}

/// Refresh-token rotation at the server: the new refresh token works, the old one is
/// refused with invalid_grant.
async fn server_rotates_refresh_tokens(server: &InteropServer, redirect_uri: &str) {
    let (verifier, authorize) =
        pkce_authorization(server, redirect_uri, "rotation", "rotation-check");
    let code = query(&server.approve(authorize.as_str()).await)["code"].clone();
    let (status, first) = exchange(server, &code, &verifier, redirect_uri, false).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let old = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String| async move {
        server
            .token_request(
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &token),
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                ],
                false,
            )
            .await
    };
    let (status, second) = refresh(old.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let new = second["refresh_token"]
        .as_str()
        .expect("rotation returns a new refresh token");
    assert_ne!(new, old);
    let (status, again) = refresh(old).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "rotated-out refresh token: {again}"
    );
    assert_eq!(again["error"], "invalid_grant", "{again}");
}

backend_tests! {
    #[tokio::test]
    #[cfg_attr(
        not(test_interop),
        ignore = "VALO_OAUTH_INTEROP_PYTHON was not set when the tests were built (CI sets it up)"
    )]
    async fn full_flow_against_an_independent_authlib_server(db) {
        let redirect_uri = format!("{PUBLIC_URL}{}", valo_oauth::config::CALLBACK_PATH);
        let backend = db.backend;
        let server = InteropServer::start(&redirect_uri).await;
        // A throw-away fake: the tenant's app below points at the Authlib server instead.
        let fake = fake_salesforce::FakeSalesforce::start(Default::default())
            .await
            .unwrap();
        let app = TestApp::spawn_with(
            &db,
            &fake,
            &[(
                "VALO_OAUTH_ASSUMED_TOKEN_LIFETIME_SECS",
                ASSUMED_LIFETIME_SECS,
            )],
        )
        .await;
        let tenant = "interop-tenant";

        // The tenant's app: the Authlib server as login URL.
        let put = app.put_app_json(tenant, "", &json!({
                "consumer_key": CLIENT_ID,
                "consumer_secret": CLIENT_SECRET,
                "login_url": server.base,
            })).await;
        assert!(
            put.status().is_success(),
            "{backend}: put app: {:?}",
            put.text().await
        );

        // Authorization: the service's URL → Authlib (auto-approves) → the service's callback.
        let authorization_url = app
            .authorization_url(
                tenant,
                json!({"return_to": format!("{RETURN_ORIGIN}/done")}),
            )
            .await;
        assert!(
            authorization_url.starts_with(&server.url("/services/oauth2/authorize?")),
            "{backend}: {authorization_url}"
        );
        let callback = server.approve(&authorization_url).await;
        assert!(callback.starts_with(&redirect_uri), "{backend}: {callback}");
        assert!(
            callback.contains("%3D%3D"),
            "{backend}: the code's padding arrives encoded: {callback}"
        );
        let response = app.callback(&callback).await;
        let (status, location) = (response.status(), location(&response));
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{backend}: callback answered {status}: {:?}\nserver log:\n{}",
            response.text().await,
            server.log()
        );
        let location = location.unwrap();
        assert!(
            location.starts_with(&format!("{RETURN_ORIGIN}/done")),
            "{backend}: {location}"
        );
        let pairs = query(&location);
        assert_eq!(
            pairs.get("status").map(String::as_str),
            Some("connected"),
            "{backend}: {location}\nserver log:\n{}",
            server.log()
        );
        let id = Uuid::parse_str(&pairs["connection_id"]).unwrap();

        let counters = server.counters().await;
        let seen = (&counters["code_exchanges"], &counters["refreshes"]);
        assert_eq!(seen, (&json!(1), &json!(0)), "{backend}: {counters}");
        let method = &counters["last_client_auth_method"];
        assert_eq!(method, "client_secret_post", "{backend}: {counters}");

        // The connection as the service understood Authlib's Salesforce-shaped response.
        let (status, connection) = app.get_connection(tenant, id).await;
        assert_eq!(status, StatusCode::OK, "{backend}: {connection}");
        assert_eq!(connection["org_id"], ORG_ID, "{backend}: {connection}");
        assert_eq!(connection["user_id"], USER_ID, "{backend}: {connection}");
        assert_eq!(
            connection["instance_url"],
            server.base.as_str(),
            "{backend}: {connection}"
        );
        assert_eq!(connection["status"], "active", "{backend}: {connection}");

        // The first access token; its expiry comes from Authlib's introspection endpoint.
        let first = access_token(&app, tenant, id, None).await;
        let first_token = first["access_token"].as_str().unwrap().to_owned();
        assert_eq!(
            first["instance_url"],
            server.base.as_str(),
            "{backend}: {first}"
        );
        let lifetime_ms = millis(first["expires_at"].as_str().unwrap())
            - millis(first["issued_at"].as_str().unwrap());
        assert!(
            (lifetime_ms - SERVER_TOKEN_LIFETIME_SECS * 1000).abs() < 5_000,
            "{backend}: expiry should come from introspection ({SERVER_TOKEN_LIFETIME_SECS} s), \
             got {lifetime_ms} ms: {first}\nserver log:\n{}",
            server.log()
        );
        assert!(server.counters().await["introspections"].as_i64().unwrap() >= 1);

        // Reported as rejected → a refresh at Authlib (rotation) → a different token.
        let second = access_token(&app, tenant, id, Some(&first_token)).await;
        let second_token = second["access_token"].as_str().unwrap().to_owned();
        assert_ne!(
            second_token, first_token,
            "{backend}: a rejected token came back"
        );
        let counters = server.counters().await;
        let seen = (&counters["refreshes"], &counters["refresh_failures"]);
        assert_eq!(seen, (&json!(1), &json!(0)), "{backend}: {counters}");
        let method = &counters["last_client_auth_method"];
        assert_eq!(method, "client_secret_post", "{backend}: {counters}");

        // The old token reported again: the current one, without another refresh.
        let again = access_token(&app, tenant, id, Some(&first_token)).await;
        assert_eq!(
            again["access_token"],
            second_token.as_str(),
            "{backend}: {again}"
        );
        let counters = server.counters().await;
        assert_eq!(counters["refreshes"], 1, "{backend}: {counters}");

        // A second refresh must present the rotated refresh token (Authlib revoked the first
        // one): proves the service stored the new one.
        let third = access_token(&app, tenant, id, Some(&second_token)).await;
        let third_token = third["access_token"].as_str().unwrap();
        assert_ne!(third_token, second_token, "{backend}: {third}");
        assert_ne!(third_token, first_token, "{backend}: {third}");
        let counters = server.counters().await;
        assert_eq!(
            counters["refreshes"],
            2,
            "{backend}: {counters}\nserver log:\n{}",
            server.log()
        );
        assert_eq!(counters["refresh_failures"], 0, "{backend}: {counters}");

        // Deleting the connection revokes it at the server, unauthenticated as Salesforce's
        // revoke endpoint takes it, and the connection is gone.
        let deleted = app
            .delete(
                &format!("/v1/tenants/{tenant}/connections/{id}"),
                "connections:write",
            )
            .await;
        assert_eq!(
            deleted.status(),
            StatusCode::NO_CONTENT,
            "{backend}: delete: {:?}\nserver log:\n{}",
            deleted.text().await,
            server.log()
        );
        let counters = server.counters().await;
        assert_eq!(counters["revocations"], 1, "{backend}: {counters}");
        assert_eq!(
            counters["authorization_headers"], 0,
            "{backend}: the service sent an Authorization header to the token endpoint: {counters}"
        );
        let (status, _) = app.get_connection(tenant, id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend}");

        // The server is not permissive: the flow above passed real checks.
        server_enforces_the_protocol(&server, &redirect_uri).await;
        server_rotates_refresh_tokens(&server, &redirect_uri).await;

        app.stop().await;
        drop(server);
        eprintln!("interop: {backend}: the flow passed against Authlib");
    }
}
