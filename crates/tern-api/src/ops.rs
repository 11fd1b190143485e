//! `/metrics` (Prometheus text format 0.0.4) and `/healthz`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use tern_core::metrics::{LATENCY_BUCKETS, METRICS};

use crate::error::ApiError;
use crate::Ctx;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let m = &METRICS;
    let mut out = String::new();
    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 10] = [
        (
            "tern_messages_accepted_total",
            "Messages accepted into the queue.",
            &m.messages_accepted,
        ),
        (
            "tern_recipients_delivered_total",
            "Recipients delivered.",
            &m.recipients_delivered,
        ),
        (
            "tern_recipients_deferred_total",
            "Delivery attempts that failed temporarily.",
            &m.recipients_deferred,
        ),
        (
            "tern_recipients_bounced_total",
            "Recipients that failed permanently.",
            &m.recipients_bounced,
        ),
        (
            "tern_recipients_expired_total",
            "Recipients given up after the retry period.",
            &m.recipients_expired,
        ),
        (
            "tern_messages_received_to_file_total",
            "Messages too large to hold in memory, received into a file as they arrived.",
            &m.messages_received_to_file,
        ),
        (
            "tern_recipients_suppressed_total",
            "Recipients not sent to: on the suppression list.",
            &m.recipients_suppressed,
        ),
        (
            "tern_smtp_sessions_total",
            "SMTP sessions opened.",
            &m.smtp_sessions_total,
        ),
        (
            "tern_webhooks_delivered_total",
            "Webhook deliveries that got a 2xx.",
            &m.webhooks_delivered,
        ),
        (
            "tern_webhooks_failed_attempts_total",
            "Webhook attempts that failed.",
            &m.webhooks_failed_attempts,
        ),
    ];
    for (name, help, value) in counters {
        let value = value.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP tern_smtp_sessions_active SMTP sessions open now.\n# TYPE tern_smtp_sessions_active gauge\ntern_smtp_sessions_active {}",
        m.smtp_sessions_active.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP tern_recipients Recipients in the store by status.\n# TYPE tern_recipients gauge"
    );
    match ctx.store.recipient_counts().await {
        Ok(counts) => {
            for status in ["queued", "deferred", "delivered", "failed", "suppressed"] {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == status)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                let _ = writeln!(out, "tern_recipients{{status=\"{status}\"}} {n}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count recipients"),
    }
    let (buckets, count, sum) = m.latency();
    let _ = writeln!(
        out,
        "# HELP tern_delivery_latency_seconds From acceptance to delivery.\n# TYPE tern_delivery_latency_seconds histogram"
    );
    for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
        let _ = writeln!(
            out,
            "tern_delivery_latency_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "tern_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}\ntern_delivery_latency_seconds_sum {sum}\ntern_delivery_latency_seconds_count {count}"
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the store does not answer.
    pub status: String,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "The store does not answer", body = Health),
    )
)]
pub async fn healthz(State(ctx): State<Ctx>) -> (StatusCode, Json<Health>) {
    match ctx.store.next_due().await {
        Ok(_) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable".into(),
                }),
            )
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint; see /api/v1/openapi.json")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "This endpoint does not take this method; see /api/v1/openapi.json".into(),
        field: None,
    }
}
