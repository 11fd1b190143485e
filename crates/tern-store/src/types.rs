use std::collections::BTreeMap;

use tern_core::{DeliveryStatus, Envelope, MessageId, RecipientState};

use crate::StagedFile;

/// A message ready to be made durable.
#[derive(Debug)]
pub struct NewMessage {
    pub id: MessageId,
    pub envelope: Envelope,
    /// The complete message as it will be delivered (added headers included).
    pub body: MessageBody,
    pub created_at: i64,
    pub auth_user: Option<String>,
    /// What the message was sent with, for search and events.
    pub info: MessageInfo,
    /// Recipients (by index) known to be suppressed, with the reason:
    /// stored as final, never attempted. The store adds those on the
    /// suppression list when it commits.
    pub suppressed: Vec<(usize, String)>,
}

impl NewMessage {
    /// Every recipient address of the message, lower-cased as the
    /// suppression list keeps them.
    pub(crate) fn lookup_addresses(&self) -> impl Iterator<Item = String> + '_ {
        self.envelope
            .recipients
            .iter()
            .map(|r| r.to_string().to_lowercase())
    }

    /// Marks the recipients on `listed` (address -> reason) suppressed.
    pub(crate) fn apply_suppressions(&mut self, listed: &BTreeMap<String, String>) {
        for (idx, rcpt) in self.envelope.recipients.iter().enumerate() {
            if self.suppressed.iter().any(|(i, _)| *i == idx) {
                continue;
            }
            if let Some(reason) = listed.get(&rcpt.to_string().to_lowercase()) {
                self.suppressed.push((idx, format!("suppressed: {reason}")));
            }
        }
        self.suppressed.sort_by_key(|(i, _)| *i);
    }
}

/// A message's octets on their way into the store.
#[derive(Debug)]
pub enum MessageBody {
    /// Held in memory: small messages, bounces, the HTTP API.
    Memory(Vec<u8>),
    /// A large message, written to a file as it arrived so that it was
    /// never held whole in memory: `head` (the header fields Tern adds)
    /// goes in front of the file's content. The store writes `head` into
    /// the room left for it and links the file into place, or copies it
    /// in the kernel; it never reads the message into memory.
    Staged { head: Vec<u8>, file: StagedFile },
}

impl MessageBody {
    /// The message's size in octets.
    pub fn len(&self) -> u64 {
        match self {
            MessageBody::Memory(b) => b.len() as u64,
            MessageBody::Staged { head, file } => head.len() as u64 + file.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Piece `index` of the message, `BODY_CHUNK` octets from `index *
    /// BODY_CHUNK` on, clipped to its end (empty past it). A staged body's
    /// file is read on a blocking thread.
    pub async fn piece(&self, index: u64) -> std::io::Result<Vec<u8>> {
        let size = crate::BODY_CHUNK as u64;
        let end = ((index + 1) * size).min(self.len());
        let start = (index * size).min(end);
        match self {
            MessageBody::Memory(b) => Ok(b[start as usize..end as usize].to_vec()),
            MessageBody::Staged { head, file } => {
                let h = head.len() as u64;
                let mut out = Vec::with_capacity((end - start) as usize);
                if start < h {
                    out.extend_from_slice(&head[start as usize..end.min(h) as usize]);
                }
                let from = start.max(h);
                if end > from {
                    let f = file.file.try_clone()?;
                    let at = file.start + (from - h);
                    let rest = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        let mut rest = vec![0u8; (end - from) as usize];
                        f.read_exact_at(&mut rest, at).map(|_| rest)
                    })
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??;
                    out.extend_from_slice(&rest);
                }
                Ok(out)
            }
        }
    }
}

impl From<Vec<u8>> for MessageBody {
    fn from(b: Vec<u8>) -> MessageBody {
        MessageBody::Memory(b)
    }
}

/// What a sender labelled a message with, plus its subject for search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInfo {
    pub subject: Option<String>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

impl MessageInfo {
    pub(crate) fn tags_json(&self) -> Option<String> {
        (!self.tags.is_empty()).then(|| serde_json::to_string(&self.tags).expect("strings"))
    }

    pub(crate) fn metadata_json(&self) -> Option<String> {
        (!self.metadata.is_empty()).then(|| serde_json::to_string(&self.metadata).expect("strings"))
    }

    pub(crate) fn from_columns(
        subject: Option<String>,
        tags: Option<String>,
        metadata: Option<String>,
    ) -> MessageInfo {
        MessageInfo {
            subject,
            tags: tags
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            metadata: metadata
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default(),
        }
    }
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
    Delivered {
        reply: String,
    },
    Deferred {
        reason: String,
        retry_at: i64,
    },
    /// A permanent failure (a bounce).
    Failed {
        reason: String,
    },
    /// Temporary failures until the message grew too old.
    Expired {
        reason: String,
    },
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
            Outcome::Failed { reason } | Outcome::Expired { reason } => DeliveryStatus::Failed {
                reason: reason.clone(),
            },
        }
    }

    /// The event this outcome records, with its extra facts (JSON).
    pub fn event(&self) -> (&'static str, Option<String>) {
        use serde_json::json;
        match self {
            Outcome::Delivered { reply } => (
                "delivered",
                tern_core::event::reply_host(reply).map(|h| json!({ "host": h }).to_string()),
            ),
            Outcome::Deferred { .. } => ("deferred", None),
            Outcome::Failed { reason } => {
                let class = tern_core::BounceClass::of(reason);
                let mut data = json!({ "bounce": class.as_str() });
                if let Some(h) = tern_core::event::reply_host(reason) {
                    data["host"] = json!(h);
                }
                ("bounced", Some(data.to_string()))
            }
            Outcome::Expired { .. } => ("expired", None),
        }
    }

    /// A hard bounce: the address goes on the suppression list.
    pub fn suppresses(&self) -> bool {
        matches!(self, Outcome::Failed { reason }
            if tern_core::BounceClass::of(reason) == tern_core::BounceClass::Hard)
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
    /// Extra facts as a JSON object (bounce class, remote host).
    pub data: Option<String>,
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

/// An API key as stored: the secret itself is never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// `send`, `read` or `admin`.
    pub scope: String,
    /// Hex SHA-256 of the secret part.
    pub secret_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// An address Tern will not send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Lower case.
    pub address: String,
    pub reason: String,
    /// `bounce` or `manual`.
    pub source: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// Event kinds sent to it; `*` is every kind.
    pub events: Vec<String>,
    pub secret: String,
    pub created_at: i64,
}

/// One event to send to one webhook, and how that has gone so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: i64,
    pub webhook_id: String,
    pub event_id: i64,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub next_attempt: i64,
    pub created_at: i64,
    pub attempts_log: Vec<WebhookAttempt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub at: i64,
    /// The HTTP status, when a response came.
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

/// An event with what its message was sent with: what webhooks carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullEvent {
    pub id: i64,
    pub message_id: String,
    pub recipient: Option<String>,
    pub kind: String,
    pub detail: Option<String>,
    pub data: Option<String>,
    pub at: i64,
    pub info: MessageInfo,
}

/// A webhook delivery taken for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueWebhook {
    pub delivery_id: i64,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub event: FullEvent,
}

/// What a webhook attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    Delivered,
    RetryAt(i64),
    Failed,
}

/// Filters for message search; every one set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageQuery {
    pub recipient: Option<String>,
    pub sender: Option<String>,
    /// A part of the subject, any case.
    pub subject: Option<String>,
    /// Some recipient has this status.
    pub status: Option<String>,
    pub tag: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Continue after this (created_at, id): newest first.
    pub after: Option<(i64, String)>,
    pub limit: usize,
}

/// A message with its recipients and what it was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    pub id: String,
    pub sender: String,
    pub created_at: i64,
    pub size: u64,
    pub info: MessageInfo,
    pub recipients: Vec<RecipientState>,
}

/// Events of one kind in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub bucket: i64,
    pub kind: String,
    pub count: i64,
}
