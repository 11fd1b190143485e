use tern_core::{DeliveryStatus, Envelope, MessageId};

/// A message ready to be made durable.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub envelope: Envelope,
    /// The complete message as it will be delivered (added headers included).
    pub body: Vec<u8>,
    pub created_at: i64,
    pub auth_user: Option<String>,
}

/// A recipient the scheduler took for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRecipient {
    pub message_id: MessageId,
    pub idx: u32,
    pub address: String,
    pub domain: String,
    pub sender: String,
    pub created_at: i64,
    /// Attempts made before this one.
    pub attempts: u32,
    /// A delay warning was already sent for this recipient.
    pub warned: bool,
    /// The message's size in octets.
    pub size: u64,
}

/// What an attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered { reply: String },
    Deferred { reason: String, retry_at: i64 },
    Failed { reason: String },
}

impl Outcome {
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Outcome::Delivered { reply } => DeliveryStatus::Delivered {
                reply: reply.clone(),
            },
            Outcome::Deferred { reason, .. } => DeliveryStatus::Deferred {
                reason: reason.clone(),
            },
            Outcome::Failed { reason } => DeliveryStatus::Failed {
                reason: reason.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    pub message_id: MessageId,
    pub idx: u32,
    pub address: String,
    pub outcome: Outcome,
    pub at: i64,
    /// A delay warning went out with this result.
    pub warned: bool,
}

/// One line of a message's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub at: i64,
    pub recipient: Option<String>,
    pub kind: String,
    pub detail: Option<String>,
}

/// A DKIM key of a sender domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyRecord {
    pub domain: String,
    pub selector: String,
    /// `rsa2048` or `ed25519`.
    pub algorithm: String,
    /// Base64 DER: PKCS#1 for RSA, PKCS#8 for Ed25519.
    pub private_key: String,
    /// Base64, as published in the record's `p=` tag.
    pub public_key: String,
    pub created_at: i64,
    /// Signs new mail; a retired key stays until removed.
    pub active: bool,
}
