//! Accept loops: one per configured listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_core::config::ListenerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::session::Session;
use crate::SmtpContext;

pub struct BoundListener {
    pub config: ListenerConfig,
    pub listener: TcpListener,
}

impl BoundListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }
}

/// Binds every listener first, so a port in use stops start-up with a clear
/// message before anything is served.
pub async fn bind_all(configs: &[ListenerConfig]) -> std::io::Result<Vec<BoundListener>> {
    let mut out = Vec::new();
    for c in configs {
        let listener = TcpListener::bind(c.address).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} ({:?}): {e}", c.address, c.mode),
            )
        })?;
        out.push(BoundListener {
            config: c.clone(),
            listener,
        });
    }
    Ok(out)
}

/// Serves until `shutdown` turns true, then waits (up to `grace`) for open
/// sessions to finish what they are doing.
pub async fn serve(
    ctx: Arc<SmtpContext>,
    listeners: Vec<BoundListener>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut sessions = JoinSet::new();
    let mut accept_loops = JoinSet::new();
    let (spawn_tx, mut spawn_rx) = tokio::sync::mpsc::unbounded_channel();
    for l in listeners {
        tracing::info!(address = %l.local_addr(), mode = ?l.config.mode, "listening");
        accept_loops.spawn(accept_loop(
            ctx.clone(),
            l,
            shutdown.clone(),
            spawn_tx.clone(),
        ));
    }
    drop(spawn_tx);
    while let Some(fut) = spawn_rx.recv().await {
        sessions.spawn(fut);
        while sessions.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    sessions.abort_all();
}

type SessionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn accept_loop(
    ctx: Arc<SmtpContext>,
    l: BoundListener,
    mut shutdown: watch::Receiver<bool>,
    spawn: tokio::sync::mpsc::UnboundedSender<SessionFuture>,
) {
    loop {
        let accepted = tokio::select! {
            r = l.listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        if *shutdown.borrow() {
            return;
        }
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(guard) = ctx.limiter.try_acquire(peer.ip()) else {
            tracing::warn!(%peer, "connection refused: too many connections");
            if l.config.mode == tern_core::ListenerMode::Smtps {
                // A plaintext reply means nothing to a TLS client: just close.
                continue;
            }
            let _ = spawn.send(Box::pin(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    stream.write_all(b"421 4.7.0 Too many connections, try again later\r\n"),
                )
                .await;
            }));
            continue;
        };
        let session = Session::new(ctx.clone(), l.config.clone(), peer, shutdown.clone());
        let counted = tern_core::metrics::SessionGuard::open();
        let _ = spawn.send(Box::pin(async move {
            session.run(stream).await;
            drop(guard);
            drop(counted);
        }));
    }
}
