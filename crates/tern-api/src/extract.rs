//! Request extractors whose failures are API errors (JSON, with the field
//! named) instead of axum's plain-text rejections.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body, read whole (up to the body limit: 413 past it). Take it
/// after an `Authorized`: a request without a valid key then hears 401
/// before its body is read, whatever its body.
pub struct ApiBody {
    bytes: bytes::Bytes,
    /// Content-Type said JSON.
    is_json: bool,
}

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                let t = t.trim().to_ascii_lowercase();
                t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
            });
        match bytes::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(ApiBody {
                bytes,
                is_json: json,
            }),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large("The request body is too large"))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

impl ApiBody {
    /// The body as `T`: not JSON is 415; malformed JSON is 400; a missing,
    /// unknown or mistyped field is 422 naming it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.is_json {
            return Err(ApiError::unsupported(
                "Expected a request with Content-Type: application/json",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&self.bytes);
        match serde_path_to_error::deserialize(&mut de) {
            Ok(v) => {
                de.end()
                    .map_err(|e| ApiError::bad_request(format!("Malformed JSON: {e}")))?;
                Ok(v)
            }
            Err(e) => {
                let inner = e.inner();
                if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                    return Err(ApiError::bad_request(format!("Malformed JSON: {inner}")));
                }
                let path = e.path().to_string();
                let text = inner.to_string();
                // serde reports a missing field at the object that lacks
                // it (`attachments[0]`); the field is that object's member.
                let field = match (path.as_str(), field_of(&text)) {
                    (".", named) => named,
                    (_, Some(name)) if text.starts_with("missing field") => {
                        Some(format!("{path}.{name}"))
                    }
                    _ => Some(path),
                };
                Err(ApiError {
                    field,
                    ..ApiError::invalid("", text)
                })
            }
        }
    }
}

/// Query parameters: a bad one is 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = clean(&e.body_text());
                Err(ApiError {
                    field: field_of(&text).or_else(|| param_of(&text)),
                    ..ApiError::bad_request(text)
                })
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// A path parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::bad_request(e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// serde names a missing or unknown field in its message: "missing field
/// `from`", "unknown field `tos`".
fn field_of(text: &str) -> Option<String> {
    let i = text.find("field `")?;
    let rest = &text[i + 7..];
    rest.find('`').map(|j| rest[..j].to_string())
}

/// A parameter that does not parse leads the message: "limit: invalid
/// digit found in string".
fn param_of(text: &str) -> Option<String> {
    let (name, _) = text.split_once(": ")?;
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plain.then(|| name.to_string())
}

fn clean(text: &str) -> String {
    text.replace("Failed to deserialize query string: ", "")
}

/// The scope a route needs, as a type (for `Authorized`).
pub trait NeededScope: Send + Sync {
    const SCOPE: tern_auth::keys::Scope;
}

/// Routes that send mail.
pub struct SendScope;
/// Routes that change the server's configuration.
pub struct AdminScope;

impl NeededScope for SendScope {
    const SCOPE: tern_auth::keys::Scope = tern_auth::keys::Scope::Send;
}
impl NeededScope for AdminScope {
    const SCOPE: tern_auth::keys::Scope = tern_auth::keys::Scope::Admin;
}

/// The request's API key, checked (present, live, of scope `S`) from the
/// header alone. Put before an `ApiBody`: axum runs the extractors in
/// order, so a request without a usable key is answered 401 or 403
/// before its body is read, and cannot make Tern hold up to
/// `max_request_size` in memory for nothing.
pub struct Authorized<S: NeededScope> {
    pub key: tern_store::ApiKeyRecord,
    scope: std::marker::PhantomData<S>,
}

impl<S: NeededScope> FromRequestParts<crate::Ctx> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &crate::Ctx) -> Result<Self, ApiError> {
        let key = ctx.authorize(&parts.headers, S::SCOPE).await?;
        Ok(Authorized {
            key,
            scope: std::marker::PhantomData,
        })
    }
}
