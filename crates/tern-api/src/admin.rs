//! The queue, webhooks and suppressions.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use tern_auth::keys::Scope;
use tern_core::{Address, MessageId};
use tern_store::{Suppression, WebhookRecord};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminScope, ApiBody, ApiPath, ApiQuery, Authorized};
use crate::messages::{decode_cursor, encode_cursor};
use crate::views::*;
use crate::Ctx;

#[utoipa::path(
    get,
    path = "/api/v1/queue",
    tag = "queue",
    responses(
        (status = 200, description = "Messages still to deliver", body = QueueList),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn queue_list(State(ctx): State<Ctx>, headers: HeaderMap) -> ApiResult<Json<QueueList>> {
    ctx.authorize(&headers, Scope::Admin).await?;
    let mut messages = Vec::new();
    for m in ctx.store.list_messages(1000).await? {
        if let Some(s) = ctx.store.message_summary(&m.id.to_string()).await? {
            messages.push(MessageView::from_summary(&s));
        }
    }
    Ok(Json(QueueList { messages }))
}

fn message_id(id: &str) -> ApiResult<MessageId> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("No queued message {id}")))
}

#[utoipa::path(
    post,
    path = "/api/v1/queue/{id}/retry",
    tag = "queue",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "Pending recipients are due now", body = Retried),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 404, description = "No such message with pending recipients", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn queue_retry(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Retried>> {
    ctx.authorize(&headers, Scope::Admin).await?;
    let mid = message_id(&id)?;
    let n = ctx
        .store
        .retry_now(Some(mid), tern_core::unix_now())
        .await?;
    if n == 0 {
        return Err(ApiError::not_found(format!("No queued message {id}")));
    }
    ctx.queue.wake();
    Ok(Json(Retried { id, recipients: n }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/queue/{id}",
    tag = "queue",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 204, description = "Deleted: it will not be delivered"),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 404, description = "No such message", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn queue_delete(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    ctx.authorize(&headers, Scope::Admin).await?;
    let mid = message_id(&id)?;
    if ctx.store.delete_message(mid).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("No queued message {id}")))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where events are POSTed: an http or https URL.
    pub url: String,
    /// Event kinds to send, or `["*"]` for all.
    pub events: Vec<String>,
    /// The HMAC-SHA256 signing secret; generated when absent.
    pub secret: Option<String>,
}

fn webhook_view(w: &WebhookRecord, with_secret: bool) -> WebhookView {
    WebhookView {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        secret: with_secret.then(|| w.secret.clone()),
        created_at: time(w.created_at),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Webhooks (without their secrets)", body = WebhookList),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn webhooks_list(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
) -> ApiResult<Json<WebhookList>> {
    ctx.authorize(&headers, Scope::Admin).await?;
    let webhooks = ctx.store.list_webhooks().await?;
    Ok(Json(WebhookList {
        webhooks: webhooks.iter().map(|w| webhook_view(w, false)).collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = WebhookView),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field cannot be used", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn webhooks_create(
    State(ctx): State<Ctx>,
    _key: Authorized<AdminScope>,
    body: ApiBody,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    let req: WebhookRequest = body.json()?;
    let url = reqwest::Url::parse(&req.url)
        .map_err(|e| ApiError::invalid("url", format!("Not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::invalid("url", "An http or https URL with a host"));
    }
    if req.url.len() > 2000 {
        return Err(ApiError::invalid("url", "At most 2000 characters"));
    }
    if req.events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "Name at least one event kind, or \"*\"",
        ));
    }
    let mut events: Vec<String> = Vec::new();
    for (i, e) in req.events.iter().enumerate() {
        if e != "*" && !tern_core::event::EVENT_KINDS.contains(&e.as_str()) {
            return Err(ApiError::invalid(
                format!("events[{i}]"),
                format!(
                    "{e:?} is not an event kind; use * or one of {}",
                    tern_core::event::EVENT_KINDS.join(", ")
                ),
            ));
        }
        if !events.contains(e) {
            events.push(e.clone());
        }
    }
    if events.iter().any(|e| e == "*") {
        events = vec!["*".into()];
    }
    let secret = match req.secret {
        Some(s) if s.len() < 16 || s.len() > 200 || s.chars().any(char::is_control) => {
            return Err(ApiError::invalid(
                "secret",
                "A secret has 16 to 200 characters and no control characters",
            ))
        }
        Some(s) => s,
        None => random(40),
    };
    let hook = WebhookRecord {
        id: format!("wh_{}", random(16).to_lowercase()),
        url: req.url,
        events,
        secret,
        created_at: tern_core::unix_now(),
    };
    ctx.store.add_webhook(&hook).await?;
    Ok((StatusCode::CREATED, Json(webhook_view(&hook, true))))
}

fn random(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 204, description = "Deleted, with its pending deliveries"),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 404, description = "No such webhook", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn webhooks_delete(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    ctx.authorize(&headers, Scope::Admin).await?;
    if ctx.store.remove_webhook(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("No webhook {id}")))
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook id")),
    responses(
        (status = 200, description = "The newest 100 deliveries, each with its attempts", body = WebhookDeliveryList),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 404, description = "No such webhook", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn webhooks_deliveries(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WebhookDeliveryList>> {
    ctx.authorize(&headers, Scope::Admin).await?;
    if !ctx.store.list_webhooks().await?.iter().any(|w| w.id == id) {
        return Err(ApiError::not_found(format!("No webhook {id}")));
    }
    let deliveries = ctx.store.webhook_deliveries(&id, 100).await?;
    Ok(Json(WebhookDeliveryList {
        deliveries: deliveries
            .into_iter()
            .map(|d| WebhookDeliveryView {
                id: d.id,
                event_id: d.event_id,
                status: d.status,
                attempts: d.attempts,
                next_attempt: time(d.next_attempt),
                created_at: time(d.created_at),
                attempt_log: d
                    .attempts_log
                    .into_iter()
                    .map(|a| WebhookAttemptView {
                        at: time(a.at),
                        status_code: a.status_code,
                        error: a.error,
                    })
                    .collect(),
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    pub cursor: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/suppressions",
    tag = "suppressions",
    params(PageParams),
    responses(
        (status = 200, description = "Suppressed addresses in address order", body = SuppressionList),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the read scope", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn suppressions_list(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<PageParams>,
) -> ApiResult<Json<SuppressionList>> {
    ctx.authorize(&headers, Scope::Read).await?;
    let limit = match p.limit {
        None => 100,
        Some(n @ 1..=1000) => n as usize,
        Some(_) => return Err(ApiError::bad_request("limit: 1 to 1000").with_field("limit")),
    };
    let after = p.cursor.as_deref().map(decode_cursor).transpose()?;
    let list = ctx.store.list_suppressions(after.as_deref(), limit).await?;
    let next_cursor = (list.len() == limit)
        .then(|| list.last().map(|s| encode_cursor(&s.address)))
        .flatten();
    Ok(Json(SuppressionList {
        suppressions: list
            .into_iter()
            .map(|s| SuppressionView {
                address: s.address,
                reason: s.reason,
                source: s.source,
                created_at: time(s.created_at),
            })
            .collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionRequest {
    pub address: String,
    /// Why; default "added by hand".
    pub reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/suppressions",
    tag = "suppressions",
    request_body = SuppressionRequest,
    responses(
        (status = 201, description = "Added (or replaced)", body = SuppressionView),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field cannot be used", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn suppressions_add(
    State(ctx): State<Ctx>,
    _key: Authorized<AdminScope>,
    body: ApiBody,
) -> ApiResult<(StatusCode, Json<SuppressionView>)> {
    let req: SuppressionRequest = body.json()?;
    let address = Address::parse(req.address.trim())
        .map_err(|e| ApiError::invalid("address", format!("Not a usable address: {e}")))?;
    let reason = req.reason.unwrap_or_else(|| "added by hand".into());
    if reason.len() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "reason",
            "At most 500 characters, no control characters",
        ));
    }
    let s = Suppression {
        address: address.to_string().to_lowercase(),
        reason,
        source: "manual".into(),
        created_at: tern_core::unix_now(),
    };
    ctx.store.add_suppression(&s).await?;
    Ok((
        StatusCode::CREATED,
        Json(SuppressionView {
            address: s.address,
            reason: s.reason,
            source: s.source,
            created_at: time(s.created_at),
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/suppressions/{address}",
    tag = "suppressions",
    params(("address" = String, Path, description = "The suppressed address")),
    responses(
        (status = 204, description = "Removed: mail to it is sent again"),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::error::ErrorBody),
        (status = 404, description = "Not on the list", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn suppressions_delete(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiPath(address): ApiPath<String>,
) -> ApiResult<StatusCode> {
    ctx.authorize(&headers, Scope::Admin).await?;
    if ctx.store.remove_suppression(&address).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("{address} is not suppressed")))
    }
}
