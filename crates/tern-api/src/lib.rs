//! Tern's HTTP API (axum): sending, search, statistics, the queue,
//! webhooks, suppressions, metrics and health. Every route under `/api/v1`
//! takes an API key (`Authorization: Bearer tern_...`) of the right scope.

mod admin;
mod error;
mod extract;
mod messages;
mod openapi;
mod ops;
mod send;
mod serve;
mod unread;
mod views;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::Router;
use tern_auth::keys::Scope;
use tern_core::Config;
use tern_queue::Queue;
use tern_smtp::Submitter;
use tern_store::{ApiKeyRecord, Store};

pub use error::{ApiError, ApiResult};
pub use serve::{bind, serve};

/// What every request shares.
pub struct ApiContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub submit: Arc<Submitter>,
    /// Local mailboxes and aliases, for recipients in local domains.
    pub directory: tern_delivery::Directory,
}

pub type Ctx = Arc<ApiContext>;

impl ApiContext {
    /// The key the request carries, if it is live and may do `needed`:
    /// 401 for no key or a wrong or revoked one, 403 for a key of another
    /// scope.
    pub(crate) async fn authorize(
        &self,
        headers: &HeaderMap,
        needed: Scope,
    ) -> ApiResult<ApiKeyRecord> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                ApiError::unauthorized("An API key is required: Authorization: Bearer <key>")
            })?;
        let Some((key, scope)) = tern_auth::keys::verify(self.store.as_ref(), token).await? else {
            return Err(ApiError::unauthorized(
                "The API key is not valid or was revoked",
            ));
        };
        if !scope.permits(needed) {
            return Err(ApiError::forbidden(format!(
                "This key has scope {}; this needs {}",
                scope.as_str(),
                needed.as_str()
            )));
        }
        Ok(key)
    }

    /// The request body limit.
    pub fn max_request_size(&self) -> usize {
        let limits = &self.config.limits;
        self.config
            .api
            .max_request_size
            .unwrap_or(limits.max_message_size + limits.max_message_size / 3 + 64 * 1024)
            as usize
    }
}

/// Every route.
pub fn router(ctx: Ctx) -> Router {
    let limit = ctx.max_request_size();
    Router::new()
        .route(
            "/api/v1/messages",
            post(send::send_message).get(messages::search),
        )
        .route("/api/v1/messages/raw", post(send::send_raw))
        .route("/api/v1/messages/{id}", get(messages::get_message))
        .route("/api/v1/stats", get(messages::stats))
        .route("/api/v1/queue", get(admin::queue_list))
        .route("/api/v1/queue/{id}", delete(admin::queue_delete))
        .route("/api/v1/queue/{id}/retry", post(admin::queue_retry))
        .route(
            "/api/v1/webhooks",
            get(admin::webhooks_list).post(admin::webhooks_create),
        )
        .route("/api/v1/webhooks/{id}", delete(admin::webhooks_delete))
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(admin::webhooks_deliveries),
        )
        .route(
            "/api/v1/suppressions",
            get(admin::suppressions_list).post(admin::suppressions_add),
        )
        .route(
            "/api/v1/suppressions/{address}",
            delete(admin::suppressions_delete),
        )
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/docs", get(openapi::page))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(unread::close_if_unread))
        .with_state(ctx)
}
