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
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        "tern_messages_accepted_total",
        "Messages accepted into the queue.",
        load(&m.messages_accepted),
    );
    counter(
        "tern_recipients_delivered_total",
        "Recipients delivered.",
        load(&m.recipients_delivered),
    );
    counter(
        "tern_recipients_deferred_total",
        "Delivery attempts that failed temporarily.",
        load(&m.recipients_deferred),
    );
    counter(
        "tern_recipients_bounced_total",
        "Recipients that failed permanently.",
        load(&m.recipients_bounced),
    );
    counter(
        "tern_recipients_expired_total",
        "Recipients given up after the retry period.",
        load(&m.recipients_expired),
    );
    counter(
        "tern_recipients_suppressed_total",
        "Recipients not sent to: on the suppression list.",
        load(&m.recipients_suppressed),
    );
    counter(
        "tern_smtp_sessions_total",
        "SMTP sessions opened.",
        load(&m.smtp_sessions_total),
    );
    counter(
        "tern_webhooks_delivered_total",
        "Webhook deliveries that got a 2xx.",
        load(&m.webhooks_delivered),
    );
    counter(
        "tern_webhooks_failed_attempts_total",
        "Webhook attempts that failed.",
        load(&m.webhooks_failed_attempts),
    );
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
