//! Webhook deliveries: every event a webhook asked for is POSTed to it as
//! JSON, signed with HMAC-SHA256 over `timestamp.body`
//! (`Tern-Signature: t=<unix>,v1=<hex>`), and retried on the schedule of
//! `[webhooks] retry` until a 2xx answers or the schedule runs out. The
//! rows are written with the event (same transaction), so a crash loses
//! none; an attempt cut off by a crash is made again when its lease ends.
//! Also here: pruning events past their retention.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tern_core::metrics::{inc, METRICS};
use tern_core::Config;
use tern_store::{DueWebhook, Store, WebhookAttempt, WebhookOutcome};
use tokio::sync::watch;

/// Deliveries in flight at once.
const PARALLEL: usize = 16;

/// The `Tern-Signature` header value for `body` sent at `t`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let v1: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={v1}")
}

/// The JSON an event is sent as.
pub fn payload(d: &DueWebhook) -> serde_json::Value {
    let e = &d.event;
    let mut v = serde_json::json!({
        "id": e.id,
        "event": e.kind,
        "timestamp": e.at,
        "time": crate::views::time(e.at),
        "message_id": e.message_id,
        "recipient": e.recipient,
        "detail": e.detail,
        "subject": e.info.subject,
        "tags": e.info.tags,
        "metadata": e.info.metadata,
    });
    if let Some(data) = e
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .and_then(|d| d.as_object().cloned())
    {
        for (k, val) in data {
            v[k] = val;
        }
    }
    v
}

/// Runs deliveries until `shutdown` turns true.
pub async fn dispatch(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeout = config.webhooks.timeout.0;
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Tern/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: cannot build the HTTP client; webhooks are off");
            return;
        }
    };
    let lease = timeout.as_secs() as i64 + 60;
    loop {
        let now = tern_core::unix_now();
        let due = match store.claim_webhooks(now, now + lease, PARALLEL).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot claim deliveries");
                Vec::new()
            }
        };
        let busy = !due.is_empty();
        let mut running = tokio::task::JoinSet::new();
        for d in due {
            let (client, store, config) = (client.clone(), store.clone(), config.clone());
            running.spawn(async move { deliver(&client, store.as_ref(), &config, d).await });
        }
        while running.join_next().await.is_some() {}
        if busy {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn deliver(client: &reqwest::Client, store: &dyn Store, config: &Config, d: DueWebhook) {
    let body = serde_json::to_vec(&payload(&d)).expect("JSON values serialize");
    let t = tern_core::unix_now();
    let sent = client
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("Tern-Signature", signature(&d.secret, t, &body))
        .header("Tern-Event", &d.event.kind)
        .header("Tern-Delivery", d.delivery_id.to_string())
        .body(body)
        .send()
        .await;
    let at = tern_core::unix_now();
    let (attempt, ok) = match sent {
        Ok(r) => {
            let code = r.status().as_u16() as i64;
            let ok = r.status().is_success();
            (
                WebhookAttempt {
                    at,
                    status_code: Some(code),
                    error: (!ok).then(|| format!("HTTP {code}")),
                },
                ok,
            )
        }
        Err(e) => (
            WebhookAttempt {
                at,
                status_code: None,
                error: Some(error_text(&e)),
            },
            false,
        ),
    };
    let retry = &config.webhooks.retry;
    let outcome = if ok {
        inc(&METRICS.webhooks_delivered);
        WebhookOutcome::Delivered
    } else {
        inc(&METRICS.webhooks_failed_attempts);
        match retry.get(d.attempts as usize) {
            Some(wait) => WebhookOutcome::RetryAt(at + wait.0.as_secs().max(1) as i64),
            None => WebhookOutcome::Failed,
        }
    };
    tracing::info!(
        webhook = %d.webhook_id,
        delivery = d.delivery_id,
        event = %d.event.kind,
        id = %d.event.message_id,
        status = ?attempt.status_code,
        error = ?attempt.error,
        outcome = ?outcome,
        "webhook attempt"
    );
    if let Err(e) = store.record_webhook(d.delivery_id, &attempt, outcome).await {
        // The lease runs out and the delivery is made again.
        tracing::warn!(error = %e, delivery = d.delivery_id, "webhooks: cannot record an attempt");
    }
}

fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Removes events and finished messages older than `[events] retention`,
/// at start and then every hour.
pub async fn prune(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let before = tern_core::unix_now() - config.events.retention.0.as_secs() as i64;
        match store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned events past their retention"),
            Err(e) => tracing::warn!(error = %e, "cannot prune events"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value computed independently:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
