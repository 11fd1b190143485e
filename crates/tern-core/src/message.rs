//! Envelopes, recipients and their delivery state.

use crate::{Address, MessageId};

/// What the client gave in MAIL FROM and RCPT TO (RFC 5321 2.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `None` is the null reverse-path `<>` used by bounces (RFC 5321 4.5.5).
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
}

impl Envelope {
    pub fn sender_string(&self) -> String {
        self.sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }
}

/// Where one recipient of a queued message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first attempt.
    Queued,
    /// A temporary failure; tried again at `next_attempt`.
    Deferred { reason: String },
    /// Accepted by the next hop or written to the mailbox.
    Delivered { reply: String },
    /// A permanent failure or the message expired; a bounce was generated.
    Failed { reason: String },
    /// On the suppression list when the message came: never attempted.
    Suppressed { reason: String },
}

impl DeliveryStatus {
    /// The word stored and shown for this status.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Deferred { .. } => "deferred",
            DeliveryStatus::Delivered { .. } => "delivered",
            DeliveryStatus::Failed { .. } => "failed",
            DeliveryStatus::Suppressed { .. } => "suppressed",
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            DeliveryStatus::Queued => None,
            DeliveryStatus::Deferred { reason }
            | DeliveryStatus::Failed { reason }
            | DeliveryStatus::Suppressed { reason } => Some(reason),
            DeliveryStatus::Delivered { reply } => Some(reply),
        }
    }

    /// Rebuilds a status from its stored form.
    pub fn from_parts(kind: &str, detail: Option<String>) -> Option<DeliveryStatus> {
        let detail = detail.unwrap_or_default();
        Some(match kind {
            "queued" => DeliveryStatus::Queued,
            "deferred" => DeliveryStatus::Deferred { reason: detail },
            "delivered" => DeliveryStatus::Delivered { reply: detail },
            "failed" => DeliveryStatus::Failed { reason: detail },
            "suppressed" => DeliveryStatus::Suppressed { reason: detail },
            _ => return None,
        })
    }

    /// True once nothing more will be attempted for this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            DeliveryStatus::Delivered { .. }
                | DeliveryStatus::Failed { .. }
                | DeliveryStatus::Suppressed { .. }
        )
    }
}

/// One recipient row of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientState {
    pub address: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// Unix seconds of the next attempt (meaningless once final).
    pub next_attempt: i64,
}

/// A message as the queue holds it: envelope and state, not the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: MessageId,
    /// Empty for the null reverse-path.
    pub sender: String,
    /// Unix seconds when it was accepted.
    pub created_at: i64,
    pub size: u64,
    pub recipients: Vec<RecipientState>,
}

impl QueuedMessage {
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }
}
