//! The server section: environment, listen addresses, public URL and data folder.

use std::net::SocketAddr;
use std::path::PathBuf;

use url::Url;

use super::layers::Layers;
use super::{ConfigError, Environment};

/// Where and as what this process serves.
pub(super) struct Server {
    pub(super) env: Environment,
    pub(super) listen: SocketAddr,
    /// The internal API's own listener; None: `listen` serves everything.
    pub(super) internal_listen: Option<SocketAddr>,
    /// Public base URL, no trailing slash.
    pub(super) public_url: Url,
    pub(super) data_dir: PathBuf,
}

impl Server {
    pub(super) fn production(&self) -> bool {
        self.env == Environment::Production
    }
}

/// `env`, `listen`, `data_dir` and `public_url` (which defaults to `http://localhost:{port}`
/// outside production).
pub(super) fn resolve(l: &Layers) -> Result<Server, ConfigError> {
    let env = environment(l)?;
    let listen = l.raw.listen;
    let internal_listen = l.raw.internal_listen;
    if internal_listen == Some(listen) && listen.port() != 0 {
        return Err(l.err(
            "internal_listen",
            format!("must differ from {}", l.name("listen")),
        ));
    }
    let data_dir = PathBuf::from(l.raw.data_dir.as_deref().unwrap_or("data"));
    let public_url = public_url(l, env == Environment::Production, listen)?;
    Ok(Server {
        env,
        listen,
        internal_listen,
        public_url,
        data_dir,
    })
}

fn environment(l: &Layers) -> Result<Environment, ConfigError> {
    match l.raw.env.as_deref().unwrap_or("development").trim() {
        "development" => Ok(Environment::Development),
        "production" => Ok(Environment::Production),
        other => Err(l.err(
            "env",
            format!("{other:?} is not one of development, production"),
        )),
    }
}

fn public_url(l: &Layers, production: bool, listen: SocketAddr) -> Result<Url, ConfigError> {
    let Some(raw) = l.raw.public_url.as_deref() else {
        if production {
            return Err(l.err(
                "public_url",
                "must be set in production (the callback registered in each ECA)",
            ));
        }
        let port = listen.port();
        return Url::parse(&format!("http://localhost:{port}"))
            .map_err(|e| l.err("public_url", e.to_string()));
    };
    let url = Url::parse(raw.trim())
        .map_err(|e| l.err("public_url", format!("{raw:?} is not a URL: {e}")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(l.err("public_url", "must be an http(s) URL"));
    }
    if production && url.scheme() != "https" {
        return Err(l.err(
            "public_url",
            "must use https in production (the callback carries authorization codes)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(l.err(
            "public_url",
            "must not contain a query, fragment or user info",
        ));
    }
    Ok(url)
}
