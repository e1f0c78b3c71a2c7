//! The physical limit of the hot path: a bare axum handler, no middleware, in a process of
//! its own (this harness, re-run with `--bare-server`), answering the access-token request
//! with a JSON body the size of the service's. What the service adds on top of it — its
//! layers, authentication, the cache, the response — is the difference to this.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;

/// The argument that makes this harness serve the bare handler instead of benchmarking.
const FLAG: &str = "--bare-server";

/// Serves the bare handler and never returns when the harness was started with [`FLAG`];
/// returns at once otherwise.
pub async fn serve_if_asked() {
    if std::env::args().nth(1).as_deref() != Some(FLAG) {
        return;
    }
    // The shape and size of the service's token response (a 114-byte token).
    let body = format!(
        "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"instance_url\":\"https://bench.my.salesforce.com\",\"issued_at\":\"2026-12-04T00:00:00Z\",\"expires_at\":\"2026-12-04T02:00:00Z\"}}",
        "0".repeat(114)
    );
    let app = Router::new().fallback(post(move || {
        let body = body.clone();
        async move {
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response()
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
    std::process::exit(0);
}

/// The bare server as a child process.
pub struct BareServer {
    child: Child,
    pub base: String,
}

impl BareServer {
    pub fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg(FLAG)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            child,
            base: format!("http://{}", line.trim()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
