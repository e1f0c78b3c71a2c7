//! `FaultProxy`: a TCP proxy between the code under test and its database, to simulate
//! "the database went away" and "the database is back".
//!
//! [`FaultProxy::cut`] closes every proxied connection at once (both directions: the client
//! reads end-of-stream or gets a reset, the server sees its client leave) and from then on
//! accepts new connections only to close them straight away, so a client fails fast instead
//! of hanging. [`FaultProxy::restore`] proxies new connections again; the connections cut
//! stay dead, so a pool must reconnect.
//!
//! ```ignore
//! let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
//! let url = proxy.url_for(&db.url); // the database, through the proxy
//! // … use the service …
//! proxy.cut();     // the database is gone
//! proxy.restore(); // and back
//! ```
//!
//! The proxy runs on the test's runtime; dropping it stops accepting and closes every
//! proxied connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy that can cut its connections on demand.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    /// While set, new connections are closed as soon as accepted.
    refusing: AtomicBool,
    /// Connections proxied right now.
    open: AtomicUsize,
    /// Bumped to close every proxied connection: each one's task watches it.
    generation: watch::Sender<u64>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            refusing: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            generation,
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        FaultProxy {
            addr,
            upstream,
            shared,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `database_url` with its host and port replaced by the proxy's: the same database and
    /// user, through the proxy.
    pub fn url_for(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("a database URL");
        url.set_ip_host(self.addr.ip())
            .expect("the URL can have a host");
        url.set_port(Some(self.addr.port()))
            .expect("the URL can have a port");
        url.to_string()
    }

    /// Closes every proxied connection now, and every new one as soon as it is accepted,
    /// until [`restore`](Self::restore).
    pub fn cut(&self) {
        // Refuse first: a connection accepted from here on sees the flag, and one accepted
        // before subscribed to the generation it is about to miss (see `accept_loop`).
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.shared
            .generation
            .send_modify(|generation| *generation += 1);
    }

    /// Proxies new connections again (the ones cut stay closed).
    pub fn restore(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is refusing connections (between [`cut`](Self::cut) and
    /// [`restore`](Self::restore)).
    pub fn is_cut(&self) -> bool {
        self.shared.refusing.load(Ordering::SeqCst)
    }

    /// How many connections are being proxied right now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.shared
            .generation
            .send_modify(|generation| *generation += 1);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors and the like: try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Subscribe before looking at the flag: a `cut` after this point bumps the
        // generation this receiver has not seen; a `cut` before it set the flag already.
        let mut cancel = shared.generation.subscribe();
        if shared.refusing.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let _open = OpenGuard::new(&shared.open);
            let mut client = client;
            let mut server = tokio::select! {
                connected = TcpStream::connect(upstream) => match connected {
                    Ok(server) => server,
                    Err(_) => {
                        reset(client);
                        return;
                    }
                },
                _ = cancel.changed() => {
                    reset(client);
                    return;
                }
            };
            client.set_nodelay(true).ok();
            server.set_nodelay(true).ok();
            let cut = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                // A new generation, or the proxy dropped (the sender is gone).
                _ = cancel.changed() => true,
            };
            if cut {
                reset(client);
                reset(server);
            }
        });
    }
}

/// Closes `stream` with a reset (RST) rather than an orderly shutdown, so the peer fails at
/// once whether it is reading or writing.
fn reset(stream: TcpStream) {
    // A zero linger makes close() send RST without blocking (the deprecation is about
    // non-zero lingers blocking the thread on drop).
    stream.set_zero_linger().ok();
    drop(stream);
}

/// Counts one open connection while alive.
struct OpenGuard<'a>(&'a AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn new(open: &'a AtomicUsize) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
