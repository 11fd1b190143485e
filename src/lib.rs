//! Tern's wiring: start every part of the server from a `Config`, and stop
//! it again. The CLI in `main.rs` and the integration tests both use this.

pub mod bench;
pub mod cli;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_auth::Authenticator;
use tern_core::config::Backend;
use tern_core::{Config, ListenerMode};
use tern_delivery::{Directory, Maildir, Router};
use tern_queue::{Queue, Scheduler, SchedulerConfig};
use tern_smtp::SmtpContext;
use tern_store::{PgStore, SqliteStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Opens the store the configuration names. Every command uses this, so the
/// CLI and a running server act on the same data.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.store.backend {
        Backend::Sqlite => Arc::new(
            SqliteStore::open_with(&config.data_dir, config.store.inline_body_max as usize)
                .await
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        ),
        Backend::Postgres => {
            let url = config.store.url.as_deref().unwrap_or_default();
            Arc::new(
                PgStore::connect(url, config.node_id())
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?,
            )
        }
    })
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A running server.
pub struct Server {
    /// Bound addresses, in the order of `config.listener`.
    pub listeners: Vec<(ListenerMode, SocketAddr)>,
    /// Where the HTTP API listens, when it does.
    pub api: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Held (flock) while the server runs.
    _lock: std::fs::File,
    /// Keeps this node's name (PostgreSQL) while the server runs.
    node: tern_store::NodeHold,
}

impl Server {
    /// Starts everything: store (with the start-up sweep), TLS, listeners,
    /// scheduler. Errors name what failed (a port in use, a bad key file).
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        tern_smtp::tls::install_crypto_provider();
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        warn_if_open(&config.data_dir);
        // One server per data directory: a second one's start-up sweep would
        // remove bodies the first has written but not yet committed.
        let lock = lock_data_dir(&config.data_dir)?;
        let store = open_store(&config).await?;
        // Before anything listens: a node refused for its name never
        // answered a connection. (PostgreSQL: an advisory lock; the
        // embedded store has the data directory's lock.)
        let node_hold = store.hold_node_name().await?;
        let tls = tern_smtp::tls::server_config(&config).context("loading TLS certificate")?;
        let bound = tern_smtp::bind_all(&config.listener).await?;
        let api_listener = match config.api.listen.filter(|_| config.api.enabled) {
            Some(addr) => Some(
                tern_api::bind(addr)
                    .await
                    .with_context(|| format!("api.listen: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        // Leases this node still holds died with its previous process
        // (no other live node has its name: `node_hold`); their next
        // attempt was written before they started.
        store.release_leases().await.context("releasing leases")?;
        let swept = store.sweep().await.context("sweeping the spool")?;
        if swept > 0 {
            tracing::info!(
                files = swept,
                "removed uncommitted or finished bodies from the spool"
            );
        }
        let listeners = bound
            .iter()
            .map(|b| (b.config.mode, b.local_addr()))
            .collect();

        let queue = Queue::new(store.clone());
        let directory = Directory::new(&config, store.clone());
        let maildir = Maildir::new(config.data_dir.join("mail"), &config.hostname);
        let remote = tern_delivery::remote::RemoteDelivery::new(&config)
            .map_err(|e| anyhow::anyhow!("outbound delivery: {e}"))?;
        let router = Arc::new(Router::new(directory.clone(), maildir, remote));
        let (shutdown, shutdown_rx) = watch::channel(false);

        let scheduler = Scheduler::new(
            queue.clone(),
            router,
            SchedulerConfig {
                hostname: config.hostname.clone(),
                policy: config.queue.retry_policy(),
                workers: config.queue.workers,
                poll: Duration::from_secs(1),
                lease: config.queue.lease.0,
                group_by_domain: config.delivery.relay.is_none(),
            },
        );
        let mut tasks = vec![tokio::spawn(scheduler.run(shutdown_rx.clone()))];

        let inbound = if config.inbound.checks {
            let checker = tern_auth::inbound::InboundChecker::new(&config.dns, &config.hostname)
                .map_err(anyhow::Error::msg)?;
            Some(Arc::new(checker))
        } else {
            None
        };
        let submitter = Arc::new(tern_smtp::Submitter {
            hostname: config.hostname.clone(),
            senders: tern_auth::SenderPolicy::new(&config, store.clone()),
            signer: tern_auth::dkim::Signer::new(store.clone()),
        });
        let api = match api_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let ctx = Arc::new(tern_api::ApiContext {
                    config: config.clone(),
                    store: store.clone(),
                    queue: queue.clone(),
                    submit: submitter.clone(),
                    directory: directory.clone(),
                });
                let tls = config
                    .api
                    .tls
                    .then(|| tokio_rustls::TlsAcceptor::from(tls.clone()));
                tasks.push(tokio::spawn(tern_api::serve(
                    ctx,
                    listener,
                    tls,
                    shutdown_rx.clone(),
                )));
                tracing::info!(%addr, tls = config.api.tls, "HTTP API listening");
                Some(addr)
            }
            None => None,
        };
        tasks.push(tokio::spawn(tern_api::webhooks::dispatch(
            config.clone(),
            store.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(tern_api::webhooks::prune(
            config.clone(),
            store.clone(),
            shutdown_rx.clone(),
        )));
        let ctx = Arc::new(SmtpContext {
            limiter: SmtpContext::limiter(&config),
            auth_throttle: tern_smtp::AuthThrottle::new(config.limits.max_auth_failures_per_ip),
            tls: tokio_rustls::TlsAcceptor::from(tls),
            queue,
            directory,
            auth: Authenticator::new(store.clone()),
            submit: submitter.clone(),
            inbound,
            config: config.clone(),
        });
        tasks.push(tokio::spawn(tern_smtp::serve(
            ctx,
            bound,
            shutdown_rx,
            Duration::from_secs(30),
        )));
        tracing::info!(hostname = %config.hostname, data_dir = %config.data_dir.display(), "Tern started");
        Ok(Server {
            listeners,
            api,
            store,
            shutdown,
            tasks,
            _lock: lock,
            node: node_hold,
        })
    }

    /// The first listener of a mode.
    pub fn addr(&self, mode: ListenerMode) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, a)| *a)
    }

    /// Told when another node took this node's name: the server must stop
    /// (see `tern_store::NodeHold::lost`).
    pub fn node_lost(&self) -> tern_store::NodeLost {
        self.node.lost()
    }

    /// Stops accepting, lets sessions and deliveries in flight finish, and
    /// returns when everything has stopped.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Says so when any user may enter the data directory: it holds mail,
/// password hashes and DKIM private keys. Not changed here: the operator
/// may have opened it on purpose. Group access is left alone (a mail
/// reader in Tern's group).
fn warn_if_open(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data directory is open to other users; it holds mail, password hashes and DKIM keys (chmod 700)"
            );
        }
    }
}

/// Takes an exclusive advisory lock on `<data_dir>/tern.lock`, released when
/// the process exits however it exits (the kernel drops flock locks).
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("tern.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        anyhow::bail!(
            "{} is in use by another `tern serve` (lock {} held)",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}
