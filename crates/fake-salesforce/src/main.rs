//! A runnable fake Salesforce for trying valo-oauth without an org.
//!
//! ```text
//! cargo run -p fake-salesforce -- --listen 127.0.0.1:9999 \
//!     --client-id ID --client-secret SECRET \
//!     --redirect-uri http://127.0.0.1:8080/oauth2/v1/callback/salesforce \
//!     [--no-rotation] [--auto-approve]
//! ```
//!
//! By default the authorize page asks a human to Allow or Deny; `--auto-approve` redirects
//! at once. `--no-rotation` behaves like a legacy Connected App (refresh tokens are not
//! rotated).

use std::net::SocketAddr;

use clap::Parser;
use fake_salesforce::{FakeOptions, FakeSalesforce};

#[derive(Parser, Debug)]
#[command(about = "A fake Salesforce OAuth server (authorize, token, introspect, revoke)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Consumer key of the fake External Client App.
    #[arg(long, default_value = "fake-consumer-key")]
    client_id: String,
    /// Consumer secret of the fake External Client App.
    #[arg(long, default_value = "fake-consumer-secret")]
    client_secret: String,
    /// Callback URL of the app (must match the service's callback exactly).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080/oauth2/v1/callback/salesforce"
    )]
    redirect_uri: String,
    /// Legacy Connected App: refresh tokens are not rotated.
    #[arg(long)]
    no_rotation: bool,
    /// Approve authorize requests at once instead of showing an Allow / Deny page.
    #[arg(long)]
    auto_approve: bool,
    /// The URL the fake is reached at, when not its listen address (e.g.
    /// `http://fake-salesforce:9999` in a container network).
    #[arg(long)]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let options = FakeOptions {
        rotate_refresh_tokens: !args.no_rotation,
        interactive: !args.auto_approve,
        ..FakeOptions::default()
    };
    let username = options.username.clone();
    let fake = FakeSalesforce::start_public(args.listen, args.public_url, options).await?;
    fake.register_app(&args.client_id, &args.client_secret, &args.redirect_uri);
    let base = fake.base_url();
    println!("Fake Salesforce listening on {base}");
    println!();
    println!("Paste into valo-oauth (register the Salesforce app):");
    println!("  login URL     : {base}");
    println!("  client id     : {}", args.client_id);
    println!("  client secret : {}", args.client_secret);
    println!("  callback URL  : {}", args.redirect_uri);
    println!();
    println!(
        "Refresh token rotation: {}; consent: {}; logs in as {username}.",
        if args.no_rotation { "off" } else { "on" },
        if args.auto_approve {
            "auto-approve"
        } else {
            "Allow / Deny page"
        },
    );
    println!(
        "Try an access token: curl -H 'Authorization: Bearer TOKEN' {base}/services/data/v62.0/"
    );
    println!("Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
