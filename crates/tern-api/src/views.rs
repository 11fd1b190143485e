//! What the API returns: JSON shapes with their OpenAPI schemas.

use std::collections::BTreeMap;

use serde::Serialize;
use tern_core::RecipientState;
use tern_store::{EventRecord, MessageSummary};
use utoipa::ToSchema;

/// Unix seconds as RFC 3339 (UTC).
pub fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SentRecipient {
    pub address: String,
    /// `queued`, or `suppressed` (on the suppression list: not sent).
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Sent {
    /// The message's id, for `GET /api/v1/messages/{id}`.
    pub id: String,
    pub recipients: Vec<SentRecipient>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// accepted, delivered, deferred, bounced, expired, rejected,
    /// suppressed, quarantined or deleted.
    pub kind: String,
    pub recipient: Option<String>,
    /// RFC 3339.
    pub at: String,
    /// The remote reply or the reason.
    pub detail: Option<String>,
    /// `hard` or `soft`, for bounces.
    pub bounce: Option<String>,
    /// The remote host that answered, for deliveries and bounces.
    pub host: Option<String>,
}

impl EventView {
    pub fn from_record(e: &EventRecord) -> EventView {
        let data: serde_json::Value = e
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
        EventView {
            kind: e.kind.clone(),
            recipient: e.recipient.clone(),
            at: time(e.at),
            detail: e.detail.clone(),
            bounce: text("bounce"),
            host: text("host"),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientView {
    pub address: String,
    /// queued, deferred, delivered, failed or suppressed.
    pub status: String,
    pub detail: Option<String>,
    pub attempts: u32,
    /// RFC 3339; only while queued or deferred.
    pub next_attempt: Option<String>,
    /// This recipient's events, oldest first (only on a single message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

impl RecipientView {
    pub fn from_state(r: &RecipientState) -> RecipientView {
        RecipientView {
            address: r.address.clone(),
            status: r.status.kind().to_string(),
            detail: r.status.detail().map(str::to_string),
            attempts: r.attempts,
            next_attempt: (!r.status.is_final()).then(|| time(r.next_attempt)),
            events: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    /// The envelope sender; empty for the null sender (bounces).
    pub sender: String,
    pub subject: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub size: u64,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub recipients: Vec<RecipientView>,
    /// Events not about one recipient (e.g. `deleted`), oldest first; only
    /// on a single message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

impl MessageView {
    pub fn from_summary(m: &MessageSummary) -> MessageView {
        MessageView {
            id: m.id.clone(),
            sender: m.sender.clone(),
            subject: m.info.subject.clone(),
            created_at: time(m.created_at),
            size: m.size,
            tags: m.info.tags.clone(),
            metadata: m.info.metadata.clone(),
            recipients: m.recipients.iter().map(RecipientView::from_state).collect(),
            events: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<MessageView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBucket {
    /// RFC 3339 start of the bucket.
    pub start: String,
    /// Events per kind; every kind is present, zero when none happened.
    pub counts: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// `hour` or `day`.
    pub interval: String,
    pub since: String,
    pub until: String,
    pub buckets: Vec<StatsBucket>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    /// Messages with recipients still queued or deferred, oldest first.
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub id: String,
    /// Recipients made due now.
    pub recipients: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// The signing secret: shown only when the webhook is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAttemptView {
    pub at: String,
    /// The HTTP status the receiver answered, if it answered.
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryView {
    pub id: i64,
    pub event_id: i64,
    /// pending, delivered or failed.
    pub status: String,
    pub attempts: u32,
    /// RFC 3339; the next try while pending.
    pub next_attempt: String,
    pub created_at: String,
    pub attempt_log: Vec<WebhookAttemptView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    pub deliveries: Vec<WebhookDeliveryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionView {
    pub address: String,
    pub reason: String,
    /// `bounce` (a hard bounce) or `manual`.
    pub source: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionList {
    pub suppressions: Vec<SuppressionView>,
    pub next_cursor: Option<String>,
}
