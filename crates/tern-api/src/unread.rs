//! `Connection: close` on answers given before the request body was read.
//!
//! Some requests are answered before their body is read: a missing or
//! wrong API key (401, 403), a body over `max_request_size` (413), an
//! unknown path. The unread rest of the body is still on its way, so the
//! server closes the connection after answering; but a client that saw
//! no `Connection: close` keeps the connection for its next request, and
//! that request fails ("connection closed before message completed").
//! RFC 9112 9.6: a server that closes after a response should say so in
//! it. This layer says so whenever a request had a body that the handler
//! did not read to its end. A small body (up to `READ_AHEAD`) is read
//! before the handler runs instead, within `BODY_TIME`, so that routes
//! that take no body keep their connections.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::error::ApiError;

/// Bodies up to this size are read before the handler runs, so that a
/// route that takes no body (`POST .../retry` with `{}`) keeps the
/// connection; holding this much before the key is checked is nothing.
const READ_AHEAD: usize = 16 * 1024;

/// The most a small body read ahead may take to arrive.
const BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The middleware (`axum::middleware::from_fn`).
pub async fn close_if_unread(req: Request, next: Next) -> Response {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if !chunked && length.unwrap_or(0) == 0 {
        return next.run(req).await;
    }
    if let (false, Some(n)) = (chunked, length) {
        if n <= READ_AHEAD as u64 {
            let (parts, body) = req.into_parts();
            // Bounded in time too: a client that announces a small body and
            // sends it slowly is not waited for (the key is not checked
            // yet).
            let read = tokio::time::timeout(BODY_TIME, axum::body::to_bytes(body, READ_AHEAD));
            if let Ok(Ok(bytes)) = read.await {
                return next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await;
            }
            let mut response =
                ApiError::bad_request("The request body did not arrive whole").into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    let read = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(Watched {
        inner: body,
        read: read.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that says when it has been read to its end.
struct Watched {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.read.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
