//! The `valo-oauth` command line: a thin layer over the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use valo_oauth::app::Application;
use valo_oauth::broker::rekey;
use valo_oauth::config::{self, ApiKey, Environment, Settings};
use valo_oauth::crypto::Keyring;

/// mimalloc instead of glibc's allocator: fewer cycles per request on the hot path, and
/// freed memory goes back to the system, so a full token cache stays flat under churn
/// (`docs/benchmarks.md`, sections 1 and 5). Secrets are wiped before they are freed
/// (`zeroize`), whichever allocator frees them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "valo-oauth",
    version,
    about = "OAuth 2.0 broker for customers' Salesforce orgs"
)]
struct Cli {
    /// An extra TOML settings file, read after config/default.toml (also VALO_OAUTH_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print a fresh encryption key as KEY_ID:BASE64 (for VALO_OAUTH_ENCRYPTION_KEYS), or
    /// with --webhook-secret a webhook signing secret (for VALO_OAUTH_WEBHOOK_SECRET).
    Keygen {
        /// The key id (default: k + today's date, e.g. k20261127).
        #[arg(long, conflicts_with = "webhook_secret")]
        key_id: Option<String>,
        /// Print a webhook signing secret, whsec_ + base64 of 32 random bytes.
        #[arg(long)]
        webhook_secret: bool,
    },
    /// Print an API token signed with the configured HS256 secret, for trying the API.
    DevToken {
        /// Space-separated scopes, e.g. "apps:write connections:write connections:read tokens:read".
        #[arg(long)]
        scope: String,
        /// Confine the token to one tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Exit 0 if the local service answers /healthz (for container health checks).
    Healthcheck,
    /// Re-seal every stored secret under the first key of VALO_OAUTH_ENCRYPTION_KEYS
    /// (safe while replicas serve: compare-and-set per value; resumable).
    Rekey {
        /// Rows read per statement.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch_size: i64,
    },
    /// Print how many stored values each key id still seals, per column.
    Keys,
    /// Print every environment variable the service reads, one per line.
    Settings,
    /// Print the OpenAPI document of the API (what /openapi.json serves; docs/openapi.json).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Settings)) {
        // Needs no settings: it lists their names.
        for name in config::environment_names() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    if matches!(cli.command, Some(Command::Openapi)) {
        // Needs no settings: the document is generated from the code alone.
        print!("{}", valo_oauth::http::openapi::json());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Keygen {
        key_id,
        webhook_secret,
    }) = cli.command
    {
        // Needs no settings: it is how an operator makes the first key.
        if webhook_secret {
            println!(
                "{}",
                valo_oauth::webhooks::WebhookSecret::generate().expose_secret()
            );
            return ExitCode::SUCCESS;
        }
        return keygen(key_id);
    }
    let env: config::EnvMap = std::env::vars().collect::<BTreeMap<_, _>>();
    let settings = match config::load(
        std::path::Path::new("config/default.toml"),
        cli.config.as_deref(),
        &env,
    ) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("valo-oauth: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    match command {
        Command::Keygen { key_id, .. } => keygen(key_id),
        Command::DevToken {
            scope,
            tenant,
            ttl_secs,
        } => dev_token(&settings, &scope, tenant, ttl_secs),
        command => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("valo-oauth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(command, settings))
        }
    }
}

async fn run(command: Command, settings: Settings) -> ExitCode {
    if matches!(command, Command::Healthcheck) {
        return healthcheck(&settings).await;
    }
    if let Err(e) = valo_oauth::telemetry::init_stderr(&settings.log, settings.log_format) {
        eprintln!("valo-oauth: configuration error: VALO_OAUTH_LOG: {e}");
        return ExitCode::from(2);
    }
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let result = match command {
        Command::Migrate => migrate(settings).await,
        Command::Rekey { batch_size } => rekey(settings, batch_size).await,
        Command::Keys => keys(settings).await,
        _ => serve(settings).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "valo-oauth stopped");
            eprintln!("valo-oauth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let development = settings.env == Environment::Development;
    let callback = settings.callback_url();
    let app = Application::build(settings).await?;
    let addr = app.local_addr()?;
    // The API is on the internal listener when there is one.
    let api = match app.internal_addr() {
        Some(internal) => internal?,
        None => addr,
    };
    if development {
        eprintln!(
            "\nvalo-oauth (development) listening on http://{addr} (API on http://{api})\n\
             callback URL for your External Client App: {callback}\n\
             mint an API token:  TOKEN=$(cargo run -q --release -- dev-token --scope \"apps:write connections:write connections:read tokens:read\")\n\
             call the API:       curl -H \"Authorization: Bearer $TOKEN\" http://{api}/v1/tenants/acme/connections\n"
        );
    }
    app.run_until_stopped().await?;
    Ok(())
}

/// The database of `settings`, for the one-shot commands (not the serving pool's settings).
async fn open_store(settings: &Settings) -> anyhow::Result<valo_oauth::store::Store> {
    use anyhow::Context as _;
    valo_oauth::store::Store::connect(
        settings.database_url.expose_secret(),
        &valo_oauth::store::StoreOptions::default(),
    )
    .await
    .context("cannot open the database")
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store = open_store(&settings).await?;
    store.migrate().await.context("migration failed")?;
    tracing::info!(database = store.backend_name(), "migrations applied");
    Ok(())
}

/// `valo-oauth rekey`: counts what is left to re-seal, then re-seals it with a progress bar
/// on a terminal (a summary line otherwise).
async fn rekey(settings: Settings, batch: i64) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let store = open_store(&settings).await?;
    let keyring = &settings.broker.keyring;
    let primary = keyring.primary_key_id().to_owned();
    let usage = rekey::key_usage(&store, batch).await?;
    let todo: u64 = usage
        .iter()
        .filter(|u| u.key_id != primary)
        .map(|u| u.values)
        .sum();
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(todo);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "re-sealing under {msg} [{bar:40}] {pos}/{len} ({eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(primary.clone());
        Some(bar)
    } else {
        None
    };
    let report = rekey::rekey(&store, keyring, batch, &mut |report| {
        if let Some(bar) = &bar {
            bar.set_position(report.examined);
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = format!(
        "rekey: {} value(s) not under key {primary}: {} re-sealed, {} rewritten by the service meanwhile, {} unreadable",
        report.examined, report.resealed, report.changed_meanwhile, report.unreadable
    );
    tracing::info!(
        key = %primary,
        examined = report.examined,
        resealed = report.resealed,
        changed_meanwhile = report.changed_meanwhile,
        unreadable = report.unreadable,
        "rekey finished"
    );
    println!("{summary}");
    if report.unreadable > 0 {
        anyhow::bail!(
            "{} stored value(s) cannot be opened with any configured key; add the key they were sealed with (see `valo-oauth keys`) and run rekey again",
            report.unreadable
        );
    }
    Ok(())
}

/// `valo-oauth keys`: what each key id still seals, so an operator knows when an old key
/// may leave the ring.
async fn keys(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    let configured: Vec<String> = settings
        .broker
        .keyring
        .key_ids()
        .map(str::to_owned)
        .collect();
    let usage = rekey::key_usage(&store, 1_000).await?;
    println!("{:<40} {:<20} {:>12}", "column", "key id", "values");
    for u in &usage {
        let note = if configured.contains(&u.key_id) {
            ""
        } else {
            "  (not configured)"
        };
        println!(
            "{:<40} {:<20} {:>12}{note}",
            u.field.label(),
            u.key_id,
            u.values
        );
    }
    for id in &configured {
        let total: u64 = usage
            .iter()
            .filter(|u| &u.key_id == id)
            .map(|u| u.values)
            .sum();
        let role = if id == settings.broker.keyring.primary_key_id() {
            "first (seals)"
        } else if total == 0 {
            "may be removed"
        } else {
            "still needed"
        };
        println!("key {id}: {total} value(s), {role}");
    }
    Ok(())
}

fn keygen(key_id: Option<String>) -> ExitCode {
    let key_id = key_id.unwrap_or_else(|| {
        let today = time::OffsetDateTime::now_utc().date();
        format!(
            "k{:04}{:02}{:02}",
            today.year(),
            u8::from(today.month()),
            today.day()
        )
    });
    let spec = Keyring::generate_key_spec(&key_id);
    // Validate what we print, so a bad --key-id fails here and not at start-up.
    if let Err(e) = Keyring::parse(&spec) {
        eprintln!("valo-oauth: {e}");
        return ExitCode::from(2);
    }
    println!("{}", spec.expose_secret());
    ExitCode::SUCCESS
}

fn dev_token(settings: &Settings, scope: &str, tenant: Option<String>, ttl_secs: u64) -> ExitCode {
    let ApiKey::Hs256(secret) = &settings.api_auth.key else {
        eprintln!(
            "valo-oauth: dev-token needs an HS256 secret (VALO_OAUTH_API_JWT_SECRET); a public key cannot sign"
        );
        return ExitCode::from(2);
    };
    if settings.env == Environment::Production {
        eprintln!("valo-oauth: warning: minting a token with the production API secret");
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = serde_json::json!({
        "sub": "dev-token",
        "aud": settings.api_auth.audience,
        "iat": now,
        "exp": now.saturating_add(i64::try_from(ttl_secs).unwrap_or(3600)),
        "scope": scope,
    });
    if let Some(tenant) = tenant {
        claims["tenant"] = serde_json::Value::String(tenant);
    }
    if let Some(issuer) = &settings.api_auth.issuer {
        claims["iss"] = serde_json::Value::String(issuer.clone());
    }
    match jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("valo-oauth: cannot sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /healthz` on the internal listener when there is one (it is the one that serves the
/// API), else on the only one.
async fn healthcheck(settings: &Settings) -> ExitCode {
    let mut addr = settings.internal_listen.unwrap_or(settings.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return ExitCode::FAILURE,
    };
    match client.get(format!("http://{addr}/healthz")).send().await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
