//! The OpenAPI 3 document, generated from the handlers' annotations, and a
//! page that renders it.

use axum::response::{Html, IntoResponse};
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tern API",
        description = "Send mail, follow what happened to it, and manage webhooks and suppressions. Every /api/v1 route takes an API key: `Authorization: Bearer tern_...` (create one with `tern key create`).",
    ),
    paths(
        crate::send::send_message,
        crate::send::send_raw,
        crate::messages::search,
        crate::messages::get_message,
        crate::messages::stats,
        crate::admin::queue_list,
        crate::admin::queue_retry,
        crate::admin::queue_delete,
        crate::admin::webhooks_list,
        crate::admin::webhooks_create,
        crate::admin::webhooks_delete,
        crate::admin::webhooks_deliveries,
        crate::admin::suppressions_list,
        crate::admin::suppressions_add,
        crate::admin::suppressions_delete,
        crate::ops::metrics,
        crate::ops::healthz,
    ),
    modifiers(&BearerKey),
    tags(
        (name = "send", description = "Sending mail (scope send)"),
        (name = "messages", description = "Search, timelines, statistics (scope read)"),
        (name = "queue", description = "The delivery queue (scope admin)"),
        (name = "webhooks", description = "Event notifications (scope admin)"),
        (name = "suppressions", description = "Addresses never sent to (read; admin to change)"),
        (name = "operations", description = "Metrics and health (no key)"),
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Renders the document with Redoc (loaded by the browser).
pub async fn page() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tern API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
</head>
<body>
<redoc spec-url="/api/v1/openapi.json"></redoc>
<noscript>The API description is at <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</noscript>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
</body>
</html>
"#,
    )
}
