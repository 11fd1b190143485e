//! Search, a message's timeline, and statistics.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use tern_auth::keys::Scope;
use tern_store::MessageQuery;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::views::{time, EventView, MessageList, MessageView, Stats, StatsBucket};
use crate::Ctx;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// A recipient address (any case).
    pub recipient: Option<String>,
    /// The envelope sender (any case).
    pub sender: Option<String>,
    /// A part of the subject (any case).
    pub subject: Option<String>,
    /// A recipient status: queued, deferred, delivered, failed, suppressed.
    #[param(pattern = "^(queued|deferred|delivered|failed|suppressed)$")]
    pub status: Option<String>,
    pub tag: Option<String>,
    /// Accepted at or after: Unix seconds or RFC 3339.
    pub since: Option<String>,
    /// Accepted before: Unix seconds or RFC 3339.
    pub until: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Unix seconds or RFC 3339.
pub(crate) fn parse_time(field: &str, value: &str) -> ApiResult<i64> {
    if let Ok(n) = value.parse::<i64>() {
        if (0..=253_402_300_799).contains(&n) {
            return Ok(n);
        }
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{field}: {value:?} is not Unix seconds or an RFC 3339 time"
            ))
            .with_field(field)
        })
}

fn limit(value: Option<u32>) -> ApiResult<usize> {
    match value {
        None => Ok(50),
        Some(n @ 1..=100) => Ok(n as usize),
        Some(_) => Err(ApiError::bad_request("limit: 1 to 100").with_field("limit")),
    }
}

pub(crate) fn encode_cursor(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

pub(crate) fn decode_cursor(value: &str) -> ApiResult<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request("cursor: not a cursor this API gave").with_field("cursor")
        })
}

const STATUSES: &[&str] = &["queued", "deferred", "delivered", "failed", "suppressed"];

#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messages",
    params(SearchParams),
    responses(
        (status = 200, description = "Messages, newest first", body = MessageList),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn search(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> ApiResult<Json<MessageList>> {
    ctx.authorize(&headers, Scope::Read).await?;
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(
                ApiError::bad_request(format!("status: one of {}", STATUSES.join(", ")))
                    .with_field("status"),
            );
        }
    }
    let after = match &p.cursor {
        None => None,
        Some(c) => {
            let text = decode_cursor(c)?;
            let (at, id) = text
                .split_once(':')
                .and_then(|(a, id)| Some((a.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| {
                    ApiError::bad_request("cursor: not a cursor this API gave").with_field("cursor")
                })?;
            Some((at, id))
        }
    };
    let limit = limit(p.limit)?;
    let q = MessageQuery {
        recipient: p.recipient,
        sender: p.sender,
        subject: p.subject,
        status: p.status,
        tag: p.tag,
        since: p
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: p
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
        after,
        limit,
    };
    let found = ctx.store.search_messages(&q).await?;
    let next_cursor = (found.len() == limit)
        .then(|| found.last())
        .flatten()
        .map(|m| encode_cursor(&format!("{}:{}", m.created_at, m.id)));
    Ok(Json(MessageList {
        messages: found.iter().map(MessageView::from_summary).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "The message, with each recipient's events", body = MessageView),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such message", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_message(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<MessageView>> {
    ctx.authorize(&headers, Scope::Read).await?;
    let not_found = || ApiError::not_found(format!("No message {id}"));
    let parsed = id
        .parse::<tern_core::MessageId>()
        .map_err(|_| not_found())?;
    let Some(summary) = ctx.store.message_summary(&id).await? else {
        return Err(not_found());
    };
    let events = ctx.store.message_events(parsed).await?;
    let mut view = MessageView::from_summary(&summary);
    for r in view.recipients.iter_mut() {
        r.events = Some(
            events
                .iter()
                .filter(|e| e.recipient.as_deref() == Some(r.address.as_str()))
                .map(EventView::from_record)
                .collect(),
        );
    }
    view.events = Some(
        events
            .iter()
            .filter(|e| e.recipient.is_none())
            .map(EventView::from_record)
            .collect(),
    );
    Ok(Json(view))
}

#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Start: Unix seconds or RFC 3339; default: one day (hour) or 30 days
    /// (day) before `until`.
    pub since: Option<String>,
    /// End (exclusive): Unix seconds or RFC 3339; default: now, with the
    /// events of the current second.
    pub until: Option<String>,
    /// `hour` (default) or `day`.
    #[param(pattern = "^(hour|day)$")]
    pub interval: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "messages",
    params(StatsParams),
    responses(
        (status = 200, description = "Events per kind per bucket", body = Stats),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn stats(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<StatsParams>,
) -> ApiResult<Json<Stats>> {
    ctx.authorize(&headers, Scope::Read).await?;
    let (interval, bucket) = match p.interval.as_deref().unwrap_or("hour") {
        "hour" => ("hour", 3600),
        "day" => ("day", 86400),
        other => {
            return Err(
                ApiError::bad_request(format!("interval: {other:?}; use hour or day"))
                    .with_field("interval"),
            )
        }
    };
    let until = match &p.until {
        Some(t) => parse_time("until", t)?,
        // The end is exclusive: one past now, or what happened in the
        // current second would not count.
        None => tern_core::unix_now() + 1,
    };
    let since = match &p.since {
        Some(t) => parse_time("since", t)?,
        None => until - if bucket == 3600 { 86400 } else { 30 * 86400 },
    };
    // Buckets start on whole hours or days (UTC).
    let since = since - since.rem_euclid(bucket);
    if until <= since {
        return Err(ApiError::bad_request("until must be after since").with_field("until"));
    }
    let n = (until - since + bucket - 1) / bucket;
    if n > 1000 {
        return Err(ApiError::bad_request(format!(
            "{n} buckets; at most 1000 (use a wider interval or a shorter range)"
        ))
        .with_field("since"));
    }
    let rows = ctx.store.stats(since, until, bucket).await?;
    let buckets = (0..n)
        .map(|i| {
            let start = since + i * bucket;
            let mut counts: BTreeMap<String, i64> = tern_core::event::EVENT_KINDS
                .iter()
                .map(|k| (k.to_string(), 0))
                .collect();
            for r in rows.iter().filter(|r| r.bucket == start) {
                *counts.entry(r.kind.clone()).or_default() += r.count;
            }
            StatsBucket {
                start: time(start),
                counts,
            }
        })
        .collect();
    Ok(Json(Stats {
        interval: interval.into(),
        since: time(since),
        until: time(until),
        buckets,
    }))
}
