//! A real browser through the whole flow: headless Chromium, driven over the W3C WebDriver
//! protocol (https://www.w3.org/TR/webdriver2/) by `chromedriver`, starts at the fake
//! Salesforce's consent page, clicks Allow (or Deny), follows the redirects to the callback,
//! and reads the visible text of the result page: the success page and several error pages.
//! It also checks that each page fits a 320 px wide screen and honours a dark colour scheme.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`; `.ci/run` installs them). Without them at build time the test is
//! reported as ignored (see `build.rs`), except under `CI=true`, where it runs and fails.
//!
//! `VALO_OAUTH_UPDATE_SCREENSHOTS=1 cargo test --locked --test browser` rewrites the PNGs in
//! `docs/screenshots/`.
//!
//! The WebDriver client is the few JSON calls below over the `reqwest` the tests already
//! use, rather than a WebDriver crate and its dependency tree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_salesforce::{Approval, Endpoint, FakeOptions, FakeSalesforce, Fault};
use serde_json::{Value, json};
use valo_testkit::app::{CLIENT_ID, TestApp};
use valo_testkit::db::TestDatabase;
use valo_testkit::process::KillOnDrop;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver names element references with (W3C WebDriver §12.2 "Elements").
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    _child: KillOnDrop,
    base: String,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        // Loopback only, and never through a proxy from the environment.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let driver = Driver {
            _child: KillOnDrop(child),
            base: format!("http://127.0.0.1:{port}"),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("WebDriver answers");
        let status = response.status();
        let value: Value = response.json().await.expect("WebDriver answers JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {value}");
        value["value"].clone()
    }

    async fn session(&self) -> Session<'_> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-proxy-server",
                         "--disable-dev-shm-usage", "--window-size=1000,900"],
            },
        }}});
        let value = self
            .call(reqwest::Method::POST, "/session", Some(capabilities))
            .await;
        Session {
            driver: self,
            id: value["sessionId"].as_str().unwrap().to_owned(),
        }
    }
}

/// One browser window.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}{path}", self.id),
                Some(body),
            )
            .await
    }

    async fn get(&self, path: &str) -> Value {
        self.driver
            .call(
                reqwest::Method::GET,
                &format!("/session/{}{path}", self.id),
                None,
            )
            .await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap().to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    /// Clicks and waits until the browser has arrived at a page under `prefix` (a click
    /// returns before the navigation it starts has finished).
    async fn click_to(&self, css: &str, prefix: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = self.script("return document.readyState").await;
            if self.url().await.starts_with(prefix) && ready == "complete" {
                return;
            }
            assert!(Instant::now() < deadline, "no navigation to {prefix}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rendered text of the page, as a person sees it.
    async fn visible_text(&self) -> String {
        let body = self.find("body").await;
        self.get(&format!("/element/{body}/text"))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Runs a script in the page (WebDriver's scripts are not subject to the page's CSP).
    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Chrome DevTools' emulation, through chromedriver's `goog/cdp/execute`.
    async fn cdp(&self, command: &str, params: Value) {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": command, "params": params}),
        )
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let data = self.get("/screenshot").await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap()
    }

    async fn close(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

fn screenshots_dir() -> Option<PathBuf> {
    (std::env::var("VALO_OAUTH_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1"))
        .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots"))
}

/// Saves the page as `name.png`, then at 320 px and in dark colours as `name-320-dark.png`
/// (when screenshots are being updated), and checks that nothing is wider than 320 px.
async fn capture(session: &Session<'_>, name: &str) {
    let narrow = json!({"width": 320, "height": 720, "deviceScaleFactor": 1, "mobile": true});
    session
        .cdp("Emulation.setDeviceMetricsOverride", narrow)
        .await;
    session
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await;
    let width = session
        .script("return document.documentElement.scrollWidth")
        .await;
    assert!(
        width.as_u64().unwrap() <= 320,
        "{name}: the page is {width} px wide at 320 px"
    );
    let background = session
        .script("return getComputedStyle(document.body).backgroundColor")
        .await;
    assert_eq!(background, "rgb(18, 18, 18)", "{name}: dark colours");
    let dark = session.screenshot().await;
    session
        .cdp("Emulation.clearDeviceMetricsOverride", json!({}))
        .await;
    session
        .cdp("Emulation.setEmulatedMedia", json!({"features": []}))
        .await;
    let light = session.screenshot().await;
    if let Some(dir) = screenshots_dir() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), light).unwrap();
        std::fs::write(dir.join(format!("{name}-320-dark.png")), dark).unwrap();
    }
}

/// Starts a flow without `return_to` (so the service renders its page) and opens it.
async fn open_flow(app: &TestApp, session: &Session<'_>) {
    let url = app.authorization_url("acme", json!({})).await;
    session.goto(&url).await;
}

/// Starts a flow, answers the consent page with its `decision` button (allow or deny) and
/// returns the visible text of the page the browser lands on, at `public`.
async fn page_after(app: &TestApp, session: &Session<'_>, decision: &str, public: &str) -> String {
    open_flow(app, session).await;
    let button = format!("button[value={decision}]");
    session.click_to(&button, public).await;
    session.visible_text().await
}

/// Asserts that the text of the `page` page holds each of `expected`.
fn assert_page_says(text: &str, page: &str, expected: &[&str]) {
    for expected in expected {
        assert!(
            text.contains(expected),
            "{page} page lacks {expected:?}: {text}"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(test_browser),
    ignore = "no /usr/bin/chromedriver when the tests were built (apt-get install chromium chromium-driver)"
)]
async fn a_browser_sees_the_success_page_and_the_error_pages() {
    for binary in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: install the Debian packages chromium and chromium-driver"
        );
    }
    let driver = Driver::start().await;
    let db = TestDatabase::sqlite().await;
    // The browser follows the redirects itself: the public URL must be the real address.
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let fake = FakeSalesforce::start(FakeOptions {
        interactive: true,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let env = [
        ("VALO_OAUTH_LISTEN", listen.as_str()),
        ("VALO_OAUTH_PUBLIC_URL", public.as_str()),
    ];
    let app = TestApp::spawn_with(&db, &fake, &env).await;
    assert!(app.put_app("acme").await.status().is_success());
    let session = driver.session().await;

    // Allow: the success page.
    open_flow(&app, &session).await;
    assert!(
        session.visible_text().await.contains("Allow Access?"),
        "the fake's consent page"
    );
    session.click_to("button[value=allow]", &public).await;
    assert!(
        session.url().await.starts_with(&public),
        "back at the callback"
    );
    let text = session.visible_text().await;
    assert!(text.contains("Salesforce connected"), "{text}");
    assert!(
        text.contains("Your Salesforce org is connected to Valo"),
        "{text}"
    );
    capture(&session, "connected").await;

    // Deny: what happened, and what to do.
    let text = page_after(&app, &session, "deny", &public).await;
    assert_page_says(
        &text,
        "deny",
        &[
            "Access was not allowed",
            "What happened",
            "How to fix it",
            "choose Allow",
            "Error code: access_denied",
            "Support reference:",
        ],
    );
    capture(&session, "access_denied").await;

    // A local ECA used from another org: the My Domain fix.
    app.fake.set_approval(Approval::Error {
        error: "OAUTH_EC_APP_NOT_FOUND".into(),
        description: "External client app is not installed in this org".into(),
    });
    open_flow(&app, &session).await;
    let text = session.visible_text().await;
    assert_page_says(
        &text,
        "app-not-found",
        &[
            "Salesforce did not find Valo's app in this org",
            "My Domain",
            "Error code: OAUTH_EC_APP_NOT_FOUND",
            "Support reference:",
        ],
    );
    capture(&session, "OAUTH_EC_APP_NOT_FOUND").await;
    app.fake.set_approval(Approval::Approve);

    // A user outside the app's Permitted Users.
    app.fake.set_approval(Approval::Error {
        error: "OAUTH_APP_ACCESS_DENIED".into(),
        description: "user is not admin approved to access this app".into(),
    });
    open_flow(&app, &session).await;
    let text = session.visible_text().await;
    assert!(
        text.contains("Permitted Users") && text.contains("Edit Policies"),
        "{text}"
    );
    capture(&session, "OAUTH_APP_ACCESS_DENIED").await;
    app.fake.set_approval(Approval::Approve);

    // The ECA lacks the refresh scope.
    app.fake.inject(Endpoint::Token, Fault::NoRefreshToken);
    let text = page_after(&app, &session, "allow", &public).await;
    assert!(
        text.contains("Perform requests at any time (refresh_token, offline_access)")
            && text.contains("Error code: no_refresh_token"),
        "{text}"
    );
    capture(&session, "no_refresh_token").await;

    // A wrong consumer secret, stored without the check: refused at the exchange.
    let wrong = app
        .client
        .put(app.url("/v1/tenants/acme/salesforce-app?verify=false"))
        .bearer_auth(app.token("apps:write", None))
        .json(&json!({"consumer_key": CLIENT_ID, "consumer_secret": "NotTheSecret000000000000", "login_url": app.fake.base_url()}))
        .send()
        .await
        .unwrap();
    assert!(wrong.status().is_success());
    let text = page_after(&app, &session, "allow", &public).await;
    assert_page_says(
        &text,
        "wrong-secret",
        &[
            "Salesforce refused Valo's consumer secret",
            "Consumer Key and Secret",
            "Error code: exchange_failed",
        ],
    );
    assert!(!text.contains("NotTheSecret"), "no secret on the page");
    capture(&session, "exchange_failed").await;

    // The same callback again: the state is spent.
    let callback = session.url().await;
    session.goto(&callback).await;
    let text = session.visible_text().await;
    assert!(
        text.contains("This sign-in link is not valid") && text.contains("already used"),
        "{text}"
    );
    capture(&session, "invalid_state").await;

    session.close().await;
    app.stop().await;
}
