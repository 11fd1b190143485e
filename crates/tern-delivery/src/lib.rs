//! Delivery agents. Each takes one message and its recipients and returns one
//! result per recipient; deciding what happens next (retry, bounce) is the
//! queue's job, not theirs.

mod body;
pub mod directory;
pub mod dns;
pub mod maildir;
pub mod remote;
mod router;

use async_trait::async_trait;
use tern_core::{Address, MessageId};

pub use body::Body;
pub use directory::{Directory, Resolution};
pub use maildir::Maildir;
pub use router::Router;

/// One message to deliver to some of its recipients.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: MessageId,
    /// Empty for the null reverse-path.
    pub sender: String,
    pub body: Body,
    pub recipients: Vec<Address>,
}

/// What one attempt did for one recipient (in the order of `Job::recipients`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered(String),
    /// Try again later (4xx, connection or local trouble).
    Temporary(String),
    /// Will never work (5xx, bad mailbox).
    Permanent(String),
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn deliver(&self, job: &Job) -> Vec<Attempt>;
}
