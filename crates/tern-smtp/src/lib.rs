//! Tern's inbound SMTP: listeners, TLS, and one `Session` per connection.
//!
//! A session parses bytes with `tern-proto`, checks state and policy in the
//! command handlers (one file each under `session/`), and hands finished
//! messages to the queue. It never touches storage directly.

pub mod headers;
mod limits;
mod listener;
mod session;
pub mod submit;
pub mod tls;

use std::sync::Arc;

use tern_auth::inbound::InboundChecker;
use tern_auth::Authenticator;
use tern_core::Config;
use tern_delivery::Directory;
use tern_queue::Queue;
use tokio_rustls::TlsAcceptor;

pub use limits::{AuthThrottle, ConnectionLimiter};
pub use listener::{bind_all, serve, BoundListener};
pub use submit::Submitter;

/// What every session shares. Passed down, never global, so two servers can
/// run in one process (the tests do).
pub struct SmtpContext {
    pub config: Arc<Config>,
    pub tls: TlsAcceptor,
    pub queue: Queue,
    pub directory: Directory,
    pub auth: Authenticator,
    /// Sender identity, Message-ID/Date, trace and DKIM for submissions.
    pub submit: Arc<Submitter>,
    /// SPF/DKIM/ARC/DMARC for inbound mail; `None` when turned off.
    pub inbound: Option<Arc<InboundChecker>>,
    pub limiter: Arc<ConnectionLimiter>,
    pub auth_throttle: AuthThrottle,
}

impl SmtpContext {
    /// The connection limiter a configuration asks for.
    pub fn limiter(config: &Config) -> Arc<ConnectionLimiter> {
        ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        )
    }
}
