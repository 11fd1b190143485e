//! Tern's domain model. No I/O lives here: other crates share these types.

pub mod address;
pub mod config;
pub mod event;
pub mod id;
pub mod message;
pub mod metrics;
pub mod retry;

pub use address::{smtp_path, Address, AddressError};
pub use config::{Config, ConfigError, ListenerMode, TlsPolicy};
pub use event::BounceClass;
pub use id::MessageId;
pub use message::{DeliveryStatus, Envelope, QueuedMessage, RecipientState};
pub use retry::RetryPolicy;

/// Seconds since the Unix epoch, the time unit the queue stores.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
