//! Building the application from settings, binding, serving, shutting down.
//!
//! `Application::build` connects the store (migrating it when configured), builds the one
//! shared Salesforce client and the API verifier, and binds the listener — port 0 works,
//! which is how the tests run many instances side by side.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::{Broker, Clock, SystemClock};
use crate::config::Settings;
use crate::http::serve::{ConnectionTimeouts, serve};
use crate::http::{self, AppState, auth::ApiAuth};
use crate::metrics::Metrics;
use crate::salesforce::{ClientSettings, SalesforceClient};
use crate::store::{Store, StoreOptions};

pub struct Application {
    listener: TcpListener,
    /// The internal API's listener, when it has its own (`VALO_OAUTH_INTERNAL_LISTEN`).
    internal: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Builds with the wall clock.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let store = Store::connect(
            settings.database_url.expose_secret(),
            &StoreOptions {
                max_connections: settings.db_max_connections,
                acquire_timeout: settings.db_acquire_timeout,
                transaction_pooler: settings.db_transaction_pooler,
            },
        )
        .await
        .context("cannot open the database")?;
        if settings.migrate_on_start {
            store
                .migrate()
                .await
                .context("cannot migrate the database")?;
        }
        // One registry per application instance: instances in one process count apart.
        let metrics = Metrics::new();
        let salesforce = SalesforceClient::new(
            ClientSettings {
                connect_timeout: settings.broker.salesforce.connect_timeout,
                request_timeout: settings.broker.salesforce.request_timeout,
                max_response_bytes: settings.broker.salesforce.max_response_bytes,
            },
            settings.broker.login_hosts.clone(),
            metrics.clone(),
        )
        .context("cannot build the HTTP client for Salesforce")?;
        let auth = ApiAuth::new(&settings.api_auth)
            .map_err(|e| anyhow::anyhow!("api_jwt_public_key_file {e}"))?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let internal = match settings.internal_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (internal)"))?,
            ),
            None => None,
        };
        let body_limit_bytes = settings.body_limit_bytes;
        let protection = settings.protection.clone();
        let broker = Broker::new(store, salesforce, clock, settings.broker.clone(), metrics);
        Ok(Self {
            listener,
            internal,
            state: AppState {
                broker,
                auth: Arc::new(auth),
                body_limit_bytes,
                protection,
            },
        })
    }

    /// The public listener's address (the only one when no internal listener is set).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The internal listener's address, when it has its own.
    pub fn internal_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.internal.as_ref().map(TcpListener::local_addr)
    }

    /// The domain object, for tests that drive the broker directly.
    pub fn broker(&self) -> &Broker {
        &self.state.broker
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then shuts down within the shutdown grace: no new
    /// refresh, keep-alive sweep or webhook claim starts from that moment, HTTP requests in
    /// flight are answered, refreshes in flight get to commit (their rotated refresh tokens
    /// exist nowhere else), webhook attempts in flight finish, and the audit counters are
    /// written a last time.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let broker = self.state.broker.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let keepalive = tokio::spawn(broker.clone().run_keepalive(stop_rx.clone()));
        let changes = tokio::spawn(broker.clone().run_change_feed(stop_rx.clone()));
        let outbox = tokio::spawn(broker.clone().run_outbox(stop_rx));
        // The audit flusher stops only after the last request was answered: its final
        // flush then holds every read this replica served.
        let (audit_stop_tx, audit_stop_rx) = watch::channel(false);
        let audit = tokio::spawn(broker.clone().run_audit(audit_stop_rx));
        let (fired_tx, mut fired_rx) = watch::channel(false);
        let draining = broker.clone();
        // Once `shutdown` completes: no new refresh starts, and every listener stops
        // accepting and drains its requests.
        let fired = {
            let fired_rx = fired_rx.clone();
            move || {
                let mut fired_rx = fired_rx.clone();
                async move {
                    let _ = fired_rx.wait_for(|fired| *fired).await;
                }
            }
        };
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            draining.begin_shutdown();
            let _ = fired_tx.send(true);
        });
        let timeouts = ConnectionTimeouts {
            header_read: self.state.protection.header_read_timeout,
            idle: self.state.protection.idle_timeout,
        };
        let serving: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match self.internal {
                None => {
                    tracing::info!(addr = %self.listener.local_addr()?, "listening");
                    let app = http::router(self.state);
                    Box::pin(serve(self.listener, app, timeouts, fired()))
                }
                Some(internal) => {
                    tracing::info!(
                        addr = %self.listener.local_addr()?,
                        internal = %internal.local_addr()?,
                        "listening"
                    );
                    let public = serve(
                        self.listener,
                        http::public_router(self.state.clone()),
                        timeouts,
                        fired(),
                    );
                    let internal = serve(
                        internal,
                        http::internal_router(self.state),
                        timeouts,
                        fired(),
                    );
                    Box::pin(async move { tokio::try_join!(public, internal).map(|_| ()) })
                }
            };
        let mut server = tokio::spawn(serving);
        let early = tokio::select! {
            joined = &mut server => Some(joined),
            _ = fired_rx.wait_for(|fired| *fired) => None,
        };
        let _ = stop_tx.send(true);
        let grace = broker.shutdown_grace();
        let deadline = tokio::time::Instant::now() + grace;
        let served = match early {
            Some(joined) => joined.unwrap_or(Ok(())),
            None => match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(joined) => joined.unwrap_or(Ok(())),
                Err(_) => {
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        "requests still open at the end of the shutdown grace; closing them"
                    );
                    server.abort();
                    Ok(())
                }
            },
        };
        let _ = audit_stop_tx.send(true);
        let _ = tokio::time::timeout_at(deadline, keepalive).await;
        let _ = tokio::time::timeout_at(deadline, changes).await;
        let _ = tokio::time::timeout_at(deadline, outbox).await;
        let _ = tokio::time::timeout_at(deadline, audit).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !broker.wait_for_refreshes(left).await {
            tracing::error!(
                refreshes = broker.refreshes_in_flight(),
                "refreshes still in flight at the end of the shutdown grace"
            );
        }
        broker.close().await;
        tracing::info!("stopped");
        served
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
