//! A real PgBouncer in **transaction pooling** mode in front of the test Postgres server, to
//! check that the service works behind the pooler production deployments put in front of
//! Postgres (where consecutive transactions of one client connection may run on different
//! server connections, so session state — prepared statements, advisory locks, `SET` —
//! does not carry over).
//!
//! Each [`PgBouncer`] runs its own process on a free port of 127.0.0.1, from a fresh folder
//! under the system temp dir holding `pgbouncer.ini`, the auth file, the log and the pid
//! file. The `[databases]` section is the wildcard `* = host=… port=…`, so any database of
//! the server (such as a [`TestDatabase`](crate::db::TestDatabase)) is reachable by name:
//! [`PgBouncer::url_for`] turns a database URL into the same URL through the bouncer.
//! Clients are trusted (`auth_type=trust`); the bouncer logs in to the server as the user
//! of the admin URL (with its password, if the URL has one).
//!
//! PgBouncer refuses to run as root: when the tests run as root it is started with
//! `-u postgres` (or `-u nobody` where there is no `postgres` user), and the folder is made
//! writable for that user. Dropping a [`PgBouncer`] kills the process and removes the folder.
//!
//! Without the `pgbouncer` binary, [`PgBouncer::start`] returns `None` (the test skips), or
//! panics when `CI=true`, so that CI cannot silently skip the pooler tests.
//!
//! ```ignore
//! let Some(db) = TestDatabase::postgres().await else { return };
//! let admin_url = std::env::var("TEST_DATABASE_URL").unwrap();
//! let Some(bouncer) = PgBouncer::start(&admin_url).await else { return };
//! let url = bouncer.url_for(&db.url); // the test database, through the bouncer
//! ```

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Where Debian and most distributions install the binary, for when `/usr/sbin` is not on
/// the `PATH` of the test run.
const KNOWN_PATHS: &[&str] = &[
    "/usr/sbin/pgbouncer",
    "/usr/bin/pgbouncer",
    "/usr/local/bin/pgbouncer",
];

/// How long [`PgBouncer::start`] waits for the bouncer to answer `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// One running PgBouncer (transaction pooling), killed on drop.
pub struct PgBouncer {
    addr: SocketAddr,
    folder: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Starts a bouncer in front of the server of `admin_url` (an admin URL such as
    /// `postgres://postgres@127.0.0.1:5432/postgres`) with `default_pool_size=20`, and waits
    /// until it answers. `None` when the `pgbouncer` binary is missing (a panic when
    /// `CI=true`).
    pub async fn start(admin_url: &str) -> Option<PgBouncer> {
        Self::start_with(admin_url, 20).await
    }

    /// As [`start`](Self::start), with `default_pool_size` server connections per
    /// database and user (a small pool makes consecutive transactions of one client land on
    /// different server connections).
    pub async fn start_with(admin_url: &str, default_pool_size: u32) -> Option<PgBouncer> {
        let Some(binary) = find_binary() else {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!(
                    "CI=true but the pgbouncer binary is not installed (apt-get install pgbouncer): \
                     the PgBouncer tests would be skipped"
                );
            }
            return None;
        };
        let upstream = url::Url::parse(admin_url).expect("the admin URL is a URL");
        let host = upstream.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = upstream.port().unwrap_or(5432);
        let user = match upstream.username() {
            "" => "postgres".to_owned(),
            user => decode(user),
        };
        let password = upstream.password().map(decode).unwrap_or_default();

        // The port is free when we look; another process may take it before the bouncer
        // binds it, so a start that fails on "Address already in use" tries another one.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let folder =
                std::env::temp_dir().join(format!("valo-pgbouncer-{}", Uuid::new_v4().simple()));
            std::fs::create_dir_all(&folder).expect("create the pgbouncer folder");
            // The bouncer may run as another user (see `run_as`): let it write its log there.
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777))
                .expect("open up the pgbouncer folder");
            write_file(
                &folder.join("userlist.txt"),
                &format!("{} {}\n", quote(&user), quote(&password)),
            );
            let listen_port = free_port();
            let ini = ini(&folder, &host, port, listen_port, default_pool_size);
            write_file(&folder.join("pgbouncer.ini"), &ini);
            let child = spawn(&binary, &folder);
            let mut bouncer = PgBouncer {
                addr: SocketAddr::from(([127, 0, 0, 1], listen_port)),
                folder,
                child,
            };
            match bouncer.wait_ready(admin_url).await {
                Ok(()) => return Some(bouncer),
                Err(problem) => {
                    let log = bouncer.log();
                    if attempt < 3 && log.contains("Address already in use") {
                        continue; // dropping `bouncer` kills it and removes its folder
                    }
                    panic!(
                        "pgbouncer did not come up on {}: {problem}\n--- pgbouncer's log ---\n{log}",
                        bouncer.addr
                    );
                }
            }
        }
    }

    /// The address the bouncer listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `database_url` (a URL of the bouncer's server) with its host and port replaced by
    /// the bouncer's: the same database and user, through the bouncer.
    pub fn url_for(&self, database_url: &str) -> String {
        with_addr(database_url, self.addr)
    }

    /// The bouncer's log, for failure messages: its standard error, which has everything
    /// the log file has plus what it printed before opening that (such as configuration
    /// errors), or the log file when standard error is empty.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.folder.join(name)).unwrap_or_default();
        let output = read("output.log");
        if output.trim().is_empty() {
            read("pgbouncer.log")
        } else {
            output
        }
    }

    /// The folder holding `pgbouncer.ini`, the auth file and the log.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    async fn wait_ready(&mut self, admin_url: &str) -> Result<(), String> {
        let url = self.url_for(admin_url);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("pgbouncer exited with {status}"));
            }
            match PgConnection::connect(&url).await {
                Ok(mut conn) => {
                    let answer = sqlx::query_scalar::<_, i32>("SELECT 1")
                        .fetch_one(&mut conn)
                        .await;
                    conn.close().await.ok();
                    match answer {
                        Ok(1) => return Ok(()),
                        Ok(other) => last = format!("SELECT 1 answered {other}"),
                        Err(e) => last = format!("SELECT 1: {e}"),
                    }
                }
                Err(e) => last = format!("connect: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("not ready after {READY_TIMEOUT:?} (last: {last})"))
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        crate::process::kill_and_reap(&mut self.child);
        std::fs::remove_dir_all(&self.folder).ok();
    }
}

/// `url` with its host and port replaced by `addr` (the path, user and query stay).
fn with_addr(url: &str, addr: SocketAddr) -> String {
    let mut url = url::Url::parse(url).expect("a database URL");
    url.set_ip_host(addr.ip()).expect("the URL can have a host");
    url.set_port(Some(addr.port()))
        .expect("the URL can have a port");
    url.to_string()
}

fn find_binary() -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("pgbouncer"))
                .collect()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(KNOWN_PATHS.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}

fn ini(folder: &Path, host: &str, port: u16, listen_port: u16, pool_size: u32) -> String {
    let folder = folder.display();
    format!(
        "[databases]\n\
         * = host={host} port={port}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {listen_port}\n\
         unix_socket_dir =\n\
         pool_mode = transaction\n\
         auth_type = trust\n\
         auth_file = {folder}/userlist.txt\n\
         max_client_conn = 1000\n\
         default_pool_size = {pool_size}\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         logfile = {folder}/pgbouncer.log\n\
         pidfile = {folder}/pgbouncer.pid\n"
    )
}

fn spawn(binary: &Path, folder: &Path) -> Child {
    let output = std::fs::File::create(folder.join("output.log")).expect("create output.log");
    let mut command = Command::new(binary);
    if let Some(user) = run_as() {
        command.arg("-u").arg(user);
    }
    command
        .arg(folder.join("pgbouncer.ini"))
        .current_dir(folder)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(output))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// The user to run the bouncer as: `None` unless we are root (PgBouncer refuses root).
fn run_as() -> Option<&'static str> {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if passwd.lines().any(|line| line.starts_with("postgres:")) {
        Some("postgres")
    } else {
        Some("nobody")
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("the bound address").port()
}

/// Writes a file the bouncer can read whichever user it runs as.
fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).ok();
}

/// A quoted auth-file field (`"` doubled inside).
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Percent-decodes a URL's user or password (`%XX` escapes; `+` stays a plus).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
