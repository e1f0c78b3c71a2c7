//! `ServiceProcess`: the real `valo-oauth` binary running `serve` as a child process, so a
//! test can do what only happens to a process: SIGKILL it mid-request, SIGTERM it and check
//! the graceful shutdown and exit status, run replicas that die independently.
//!
//! The child gets a clean environment (`PATH` plus what the test passes; the JSON log format
//! unless the test says otherwise), runs in the crate's folder (so `config/default.toml` is
//! read, as in production), and writes its standard output and error to `service.log` in a
//! fresh folder under the system temp dir ([`ServiceProcess::log`] reads it). Pass
//! `VALO_OAUTH_LISTEN=127.0.0.1:0`: [`ServiceProcess::spawn`] waits for the `listening` log
//! line and reads the bound address from it.
//!
//! ```ignore
//! let mut service = ServiceProcess::spawn(env!("CARGO_BIN_EXE_valo-oauth"), &env).await;
//! let health = reqwest::get(format!("{}/healthz", service.base())).await.unwrap();
//! let status = service.sigterm_and_wait(Duration::from_secs(5)).await;
//! assert!(status.is_some_and(|s| s.success()), "{}", service.log());
//! ```
//!
//! Dropping a [`ServiceProcess`] kills the child (SIGKILL) and removes the folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long [`ServiceProcess::spawn`] waits for the `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The service binary, running `serve`.
pub struct ServiceProcess {
    addr: SocketAddr,
    folder: PathBuf,
    child: Child,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Starts `valo-oauth serve` with `PATH` and `env` (plus `VALO_OAUTH_LOG_FORMAT=json`
    /// unless `env` sets it) and waits until it logs `listening`; panics with the log if it
    /// exits or stays silent for 10 s.
    pub async fn spawn(
        binary: impl AsRef<std::path::Path>,
        env: &[(String, String)],
    ) -> ServiceProcess {
        let folder = std::env::temp_dir().join(format!("valo-process-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&folder).expect("create the process folder");
        let log_path = folder.join("service.log");
        let log = std::fs::File::create(&log_path).expect("create service.log");
        let log_err = log.try_clone().expect("clone the log file handle");

        let mut command = Command::new(binary.as_ref());
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if !env.iter().any(|(k, _)| k == "VALO_OAUTH_LOG_FORMAT") {
            command.env("VALO_OAUTH_LOG_FORMAT", "json");
        }
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(crate::REPOSITORY_ROOT)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command.spawn().expect("start the valo-oauth binary");

        let mut process = ServiceProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            folder,
            child,
            status: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = listening_addr(&process.log()) {
                process.addr = addr;
                return process;
            }
            if let Some(status) = process.try_status() {
                panic!(
                    "valo-oauth exited with {status} before listening\n--- log ---\n{}",
                    process.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "valo-oauth did not log `listening` within {START_TIMEOUT:?}\n--- log ---\n{}",
                    process.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` + [`addr`](Self::addr).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to standard output and error so far.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The file the child writes its output to.
    pub fn log_path(&self) -> PathBuf {
        self.folder.join("service.log")
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGKILL, then reap: no shutdown code runs, as when a node dies.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            self.child.kill().ok();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGTERM (the orchestrator's stop), then waits up to `within` for the child to exit.
    /// The exit status, or `None` if it still runs (it is left running; drop kills it).
    pub async fn sigterm_and_wait(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_status() {
            return Some(status);
        }
        let sent = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The folder holding the log (removed on drop).
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// The standard output of a finished command; fails (with its standard output and error)
/// unless it exited with success. `what` names the command in the failure.
pub fn stdout_of(output: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Kills a child process and waits for it, so that no zombie is left; errors (it has
/// exited already) are ignored.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process that is killed and reaped when this is dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
        std::fs::remove_dir_all(&self.folder).ok();
    }
}

/// The address of the first `listening` line of `log`: a JSON line whose message is
/// `listening` (the field `addr` at the top level, as `flatten_event` writes it, or under
/// `fields`), or in another format, the `addr=` of a line containing `listening`.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    // Only complete lines: the last one may still be being written.
    let complete = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
    complete.lines().find_map(|line| {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
            let message = json
                .get("message")
                .or_else(|| json.pointer("/fields/message"))?;
            if message != "listening" {
                return None;
            }
            let addr = json.get("addr").or_else(|| json.pointer("/fields/addr"))?;
            return addr.as_str()?.parse().ok();
        }
        if !line.contains("listening") {
            return None;
        }
        let (_, rest) = line.split_once("addr=")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
