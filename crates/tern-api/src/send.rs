//! `POST /api/v1/messages` and `/api/v1/messages/raw`: the HTTP way in.
//! After validation and MIME building, a message takes the submission path
//! SMTP AUTH takes (`tern_smtp::Submitter`): sender identity, Message-ID
//! and Date, trace header, DKIM, then the durable queue. 202 only once the
//! queue has it on disk.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use serde::Deserialize;
use tern_core::{Address, Envelope, MessageId};
use tern_delivery::Resolution;
use tern_smtp::headers::TraceInfo;
use tern_smtp::submit::Refusal;
use tern_store::{ApiKeyRecord, MessageInfo};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiBody, Authorized, SendScope};
use crate::views::{Sent, SentRecipient};
use crate::Ctx;

const MAX_TAGS: usize = 20;
const MAX_METADATA: usize = 20;

/// A message to build and send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// `user@example.com` or `Name <user@example.com>`; the envelope
    /// sender too. Its domain must be one the key may send as.
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    /// Recipients not shown in the message.
    #[serde(default)]
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    #[serde(default)]
    pub subject: String,
    /// The plain-text body; `text` or `html` (or both) is required.
    pub text: Option<String>,
    pub html: Option<String>,
    /// Extra header fields (`X-...`); the ones above and MIME fields
    /// cannot be set here.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentRequest>,
    /// Labels for search, statistics and webhooks (at most 20).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Your own key/value pairs, returned with every event (at most 20).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRequest {
    pub filename: String,
    /// e.g. `application/pdf`.
    pub content_type: String,
    /// The content, base64 (RFC 4648).
    pub content_base64: String,
}

/// A complete MIME message to send as it is (apart from the headers Tern
/// adds).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// The message, RFC 5322. Bare LF line ends are turned into CRLF.
    pub message: String,
    /// The envelope sender; default: the address in `From:`.
    pub from: Option<String>,
    /// The envelope recipients; default: the addresses in To, Cc and Bcc.
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Header fields the request sets through its own fields, or that only
/// the MIME builder or Tern itself writes.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "received",
    "return-path",
    "dkim-signature",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
];

#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "send",
    request_body = SendRequest,
    responses(
        (status = 202, description = "Queued (on disk)", body = Sent),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "Wrong scope, or a sender domain the key may not use", body = crate::error::ErrorBody),
        (status = 413, description = "The message is too large", body = crate::error::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field cannot be used; `field` names it", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable; try again", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn send_message(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authorized { key, .. }: Authorized<SendScope>,
    body: ApiBody,
) -> ApiResult<(StatusCode, Json<Sent>)> {
    let req: SendRequest = body.json()?;
    let (name, from) = mailbox("from", &req.from)?;
    let reply_to = req
        .reply_to
        .as_deref()
        .map(|r| mailbox("reply_to", r))
        .transpose()?;
    let mut envelope_rcpts = Vec::new();
    let mut shown = BTreeMap::<&str, Vec<(Option<String>, Address)>>::new();
    for (field, list) in [("to", &req.to), ("cc", &req.cc), ("bcc", &req.bcc)] {
        for (i, r) in list.iter().enumerate() {
            let (n, a) = mailbox(&format!("{field}[{i}]"), r)?;
            push_recipient(&mut envelope_rcpts, a.clone());
            shown.entry(field).or_default().push((n, a));
        }
    }
    check_recipient_count(&ctx, envelope_rcpts.len(), "to")?;
    header_text("subject", &req.subject)?;
    let text = req.text.as_deref().filter(|t| !t.is_empty());
    let html = req.html.as_deref().filter(|t| !t.is_empty());
    if text.is_none() && html.is_none() {
        return Err(ApiError::invalid(
            "text",
            "The message needs a text or an html body",
        ));
    }
    for (field, body) in [("text", text), ("html", html)] {
        if body.is_some_and(|b| b.contains('\0')) {
            return Err(ApiError::invalid(
                field,
                "The body contains a NUL character",
            ));
        }
    }
    for (name, value) in &req.headers {
        let field = format!("headers.{name}");
        if !valid_field_name(name) {
            return Err(ApiError::invalid(
                field,
                "A header name is 1 to 76 printable characters without ':' or spaces",
            ));
        }
        if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(ApiError::invalid(
                field,
                format!("{name} cannot be set in headers; use the request's own fields"),
            ));
        }
        header_text(&field, value)?;
    }
    let mut attachments = Vec::new();
    for (i, a) in req.attachments.iter().enumerate() {
        attachments.push(attachment(i, a)?);
    }
    let info = info(req.subject.clone(), &req.tags, &req.metadata)?;

    submitter_check(&ctx, &key, &from, "from").await?;

    let id = MessageId::generate();
    let mut builder = MessageBuilder::new()
        .message_id(format!("{id}@{}", ctx.config.hostname))
        .date(mail_builder::headers::date::Date::new(tern_core::unix_now()))
        .from(builder_address(&name, &from))
        .subject(req.subject.as_str());
    for field in ["to", "cc"] {
        if let Some(list) = shown.get(field) {
            let list: Vec<mail_builder::headers::address::Address<'_>> =
                list.iter().map(|(n, a)| builder_address(n, a)).collect();
            builder = if field == "to" {
                builder.to(list)
            } else {
                builder.cc(list)
            };
        }
    }
    if let Some((n, a)) = &reply_to {
        builder = builder.reply_to(builder_address(n, a));
    }
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), Text::new(value.as_str()));
    }
    if let Some(t) = text {
        builder = builder.text_body(t);
    }
    if let Some(h) = html {
        builder = builder.html_body(h);
    }
    for (filename, content_type, bytes) in attachments {
        builder = builder.attachment(content_type, filename, bytes);
    }
    let body = builder
        .write_to_vec()
        .map_err(|e| ApiError::invalid("attachments", format!("Cannot build the message: {e}")))?;
    check_size(&ctx, body.len(), "attachments")?;
    let envelope = Envelope {
        sender: Some(from),
        recipients: envelope_rcpts,
    };
    queue(&ctx, &key, peer, id, envelope, &body, info).await
}

#[utoipa::path(
    post,
    path = "/api/v1/messages/raw",
    tag = "send",
    request_body = RawRequest,
    responses(
        (status = 202, description = "Queued (on disk)", body = Sent),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 401, description = "No valid API key", body = crate::error::ErrorBody),
        (status = 403, description = "Wrong scope, or a sender domain the key may not use", body = crate::error::ErrorBody),
        (status = 413, description = "The message is too large", body = crate::error::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field cannot be used; `field` names it", body = crate::error::ErrorBody),
        (status = 503, description = "Storage unavailable; try again", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn send_raw(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authorized { key, .. }: Authorized<SendScope>,
    body: ApiBody,
) -> ApiResult<(StatusCode, Json<Sent>)> {
    let req: RawRequest = body.json()?;
    let body = crlf("message", &req.message)?;
    check_size(&ctx, body.len(), "message")?;
    let max_header = ctx.config.limits.max_header_size;
    match tern_smtp::headers::check_header_section(&body, max_header) {
        Ok(()) => {}
        Err(e @ tern_smtp::headers::HeaderError::TooLarge(_)) => {
            return Err(ApiError::too_large(e.to_string()).with_field("message"))
        }
        Err(e) => return Err(ApiError::invalid("message", e.to_string())),
    }
    // SMTP refuses longer lines (RFC 5321 4.5.3.1.6), so no relay could
    // take them either.
    let max_line = ctx.config.limits.max_text_line;
    if body
        .split_inclusive(|b| *b == b'\n')
        .any(|line| line.len() > max_line)
    {
        return Err(ApiError::invalid(
            "message",
            format!("A line is longer than {max_line} octets with its CRLF"),
        ));
    }
    let parsed = mail_parser::MessageParser::new()
        .parse_headers(&body)
        .filter(|m| !m.headers().is_empty())
        .ok_or_else(|| ApiError::invalid("message", "The message has no header fields"))?;
    if !body.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(ApiError::invalid(
            "message",
            "The message needs an empty line between its header and its body",
        ));
    }
    let from = match &req.from {
        Some(f) => mailbox("from", f)?.1,
        None => {
            let domains = parsed
                .from()
                .and_then(|f| f.first())
                .and_then(|a| a.address());
            let Some(addr) = domains else {
                return Err(ApiError::invalid(
                    "message",
                    "The message has no From: address (or give `from`)",
                ));
            };
            Address::parse(addr)
                .map_err(|e| ApiError::invalid("message", format!("From: {addr}: {e}")))?
        }
    };
    let mut rcpts = Vec::new();
    if req.to.is_empty() {
        for list in [parsed.to(), parsed.cc(), parsed.bcc()]
            .into_iter()
            .flatten()
        {
            for a in list.iter() {
                if let Some(addr) = a.address() {
                    let a = Address::parse(addr).map_err(|e| {
                        ApiError::invalid("message", format!("recipient {addr}: {e}"))
                    })?;
                    push_recipient(&mut rcpts, a);
                }
            }
        }
    } else {
        for (i, r) in req.to.iter().enumerate() {
            push_recipient(&mut rcpts, mailbox(&format!("to[{i}]"), r)?.1);
        }
    }
    check_recipient_count(&ctx, rcpts.len(), "to")?;
    let subject = tern_queue::subject_of(&body).unwrap_or_default();
    let info = info(subject, &req.tags, &req.metadata)?;
    submitter_check(&ctx, &key, &from, "from").await?;
    if let Err(r) = ctx
        .submit
        .check_from_header(tern_auth::Sender::Key(&key.name), &body)
        .await
    {
        return Err(refusal(&ctx, r, "message", &from).await);
    }
    // Bcc never travels with the message (RFC 5322 3.6.3).
    let body = strip_header(&body, "bcc");
    let envelope = Envelope {
        sender: Some(from),
        recipients: rcpts,
    };
    queue(
        &ctx,
        &key,
        peer,
        MessageId::generate(),
        envelope,
        &body,
        info,
    )
    .await
}

/// Seals and queues; the answer names each recipient's fate.
async fn queue(
    ctx: &Ctx,
    key: &ApiKeyRecord,
    peer: SocketAddr,
    id: MessageId,
    envelope: Envelope,
    body: &[u8],
    info: MessageInfo,
) -> ApiResult<(StatusCode, Json<Sent>)> {
    let envelope = resolve_local(ctx, envelope).await?;
    let protocol = if ctx.config.api.tls { "HTTPS" } else { "HTTP" };
    let single = (envelope.recipients.len() == 1).then(|| envelope.recipients[0].to_string());
    let trace = TraceInfo {
        helo: "",
        peer: peer.ip(),
        hostname: &ctx.config.hostname,
        id,
        protocol,
        tls: None,
        single_recipient: single,
    };
    let message = ctx.submit.seal(id, &trace, body).await.map_err(|e| {
        tracing::error!(%id, error = %e, "cannot DKIM-sign");
        ApiError::unavailable("Temporary signing failure, try again later")
    })?;
    let addresses: Vec<String> = envelope.recipients.iter().map(|r| r.to_string()).collect();
    let user = format!("key:{}", key.name);
    let queued = ctx
        .queue
        .submit(id, envelope, message.into(), Some(user), info)
        .await?;
    tracing::info!(%id, key = %key.name, rcpts = addresses.len(), "queued from the API");
    let recipients = addresses
        .into_iter()
        .map(|address| SentRecipient {
            status: if queued.suppressed.contains(&address) {
                "suppressed".into()
            } else {
                "queued".into()
            },
            address,
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(Sent {
            id: id.to_string(),
            recipients,
        }),
    ))
}

/// Sender identity for the envelope sender.
async fn submitter_check(
    ctx: &Ctx,
    key: &ApiKeyRecord,
    from: &Address,
    field: &str,
) -> ApiResult<()> {
    let what = format!("Sender <{from}>");
    match ctx
        .submit
        .check_domain(tern_auth::Sender::Key(&key.name), from.domain(), &what)
        .await
    {
        Ok(()) => Ok(()),
        Err(r) => Err(refusal(ctx, r, field, from).await),
    }
}

/// The API error for a refused submission; refusals of identity are
/// recorded as `rejected` events.
async fn refusal(ctx: &Ctx, r: Refusal, field: &str, from: &Address) -> ApiError {
    match r {
        Refusal::NotAllowed(text) => {
            let id = MessageId::generate().to_string();
            let detail = format!("from {from}: {text}");
            let now = tern_core::unix_now();
            if let Err(e) = ctx
                .store
                .record_event(&id, None, "rejected", Some(&detail), now)
                .await
            {
                tracing::warn!(error = %e, "cannot record a rejection");
            }
            ApiError::forbidden(text).with_field(field)
        }
        Refusal::BadFrom(text) => ApiError::invalid(field, text),
        Refusal::Temporary(text) => ApiError::unavailable(text),
    }
}

/// Adds an envelope recipient unless the address is already there (in
/// any case, as suppressions and local mailboxes see it): an address in
/// both To and Bcc gets one copy, not two.
/// Recipients in this server's own domains, as SMTP's RCPT sees them: an
/// unknown mailbox is refused (SMTP says 550 5.1.1), an alias becomes its
/// targets.
async fn resolve_local(ctx: &Ctx, envelope: Envelope) -> ApiResult<Envelope> {
    let mut recipients = Vec::with_capacity(envelope.recipients.len());
    for rcpt in envelope.recipients {
        match ctx.directory.resolve(&rcpt).await? {
            Resolution::Remote => push_recipient(&mut recipients, rcpt),
            Resolution::Local(targets) => {
                for t in targets {
                    push_recipient(&mut recipients, t);
                }
            }
            Resolution::Unknown => {
                return Err(ApiError::invalid(
                    "to",
                    format!("{rcpt}: no such mailbox here"),
                ))
            }
        }
    }
    Ok(Envelope {
        sender: envelope.sender,
        recipients,
    })
}

fn push_recipient(list: &mut Vec<Address>, address: Address) {
    let key = address.to_string().to_lowercase();
    if !list.iter().any(|a| a.to_string().to_lowercase() == key) {
        list.push(address);
    }
}

fn check_recipient_count(ctx: &Ctx, n: usize, field: &str) -> ApiResult<()> {
    let max = ctx.config.limits.max_recipients;
    if n == 0 {
        return Err(ApiError::invalid(field, "At least one recipient is needed"));
    }
    if n > max {
        return Err(ApiError::invalid(
            field,
            format!("{n} recipients; at most {max} per message"),
        ));
    }
    Ok(())
}

fn check_size(ctx: &Ctx, size: usize, field: &str) -> ApiResult<()> {
    let max = ctx.config.limits.max_message_size;
    if size as u64 > max {
        return Err(ApiError::too_large(format!(
            "The message is {size} octets; the limit is {max}"
        ))
        .with_field(field));
    }
    Ok(())
}

/// `addr` or `Name <addr>`: the display name and the address.
fn mailbox(field: &str, text: &str) -> ApiResult<(Option<String>, Address)> {
    header_text(field, text)?;
    let text = text.trim();
    let (name, addr) = match (text.rfind('<'), text.ends_with('>')) {
        (Some(i), true) => {
            let name = text[..i].trim().trim_matches('"').trim();
            (
                (!name.is_empty()).then(|| name.to_string()),
                &text[i + 1..text.len() - 1],
            )
        }
        _ => (None, text),
    };
    if name.as_deref().is_some_and(|n| n.contains(['<', '>', '"'])) {
        return Err(ApiError::invalid(
            field,
            "The display name cannot contain < > or \"",
        ));
    }
    let address = Address::parse(addr)
        .map_err(|e| ApiError::invalid(field, format!("{addr:?} is not a usable address: {e}")))?;
    Ok((name, address))
}

fn builder_address<'a>(
    name: &'a Option<String>,
    addr: &Address,
) -> mail_builder::headers::address::Address<'a> {
    match name {
        Some(n) => (n.clone(), addr.to_string()).into(),
        None => addr.to_string().into(),
    }
}

/// A header value: no CR, LF or NUL, which would end the field and start
/// another (header injection), and no longer than a line may be.
fn header_text(field: &str, value: &str) -> ApiResult<()> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(ApiError::invalid(
            field,
            "Line breaks and NUL are not allowed in a header value",
        ));
    }
    if value.len() > 998 {
        return Err(ApiError::invalid(field, "At most 998 characters"));
    }
    Ok(())
}

/// RFC 5322 2.2: printable US-ASCII except colon.
fn valid_field_name(name: &str) -> bool {
    (1..=76).contains(&name.len()) && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fn attachment(i: usize, a: &AttachmentRequest) -> ApiResult<(String, String, Vec<u8>)> {
    let field = |f: &str| format!("attachments[{i}].{f}");
    if a.filename.is_empty() {
        return Err(ApiError::invalid(
            field("filename"),
            "The file name is empty",
        ));
    }
    if a.filename.contains(['\r', '\n', '\0', '"', '\\', '/']) || a.filename.len() > 255 {
        return Err(ApiError::invalid(
            field("filename"),
            "A file name has at most 255 characters and no line breaks, NUL, quotes, / or \\",
        ));
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let valid_type = a
        .content_type
        .split_once('/')
        .is_some_and(|(t, s)| token(t) && token(s));
    if !valid_type {
        return Err(ApiError::invalid(
            field("content_type"),
            "A content type is type/subtype, e.g. application/pdf",
        ));
    }
    let compact: String = a
        .content_base64
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| ApiError::invalid(field("content_base64"), format!("Not base64: {e}")))?;
    Ok((
        a.filename.clone(),
        a.content_type.to_ascii_lowercase(),
        bytes,
    ))
}

fn info(
    subject: String,
    tags: &[String],
    metadata: &BTreeMap<String, String>,
) -> ApiResult<MessageInfo> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "tags",
            format!("At most {MAX_TAGS} tags"),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty() || t.chars().count() > 64 || t.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                format!("tags[{i}]"),
                "A tag has 1 to 64 characters and no control characters",
            ));
        }
    }
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            "metadata",
            format!("At most {MAX_METADATA} keys"),
        ));
    }
    for (k, v) in metadata {
        let key_ok = (1..=64).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !key_ok {
            return Err(ApiError::invalid(
                format!("metadata.{k}"),
                "A metadata key has 1 to 64 letters, digits, _ - or .",
            ));
        }
        if v.chars().count() > 1000 || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                format!("metadata.{k}"),
                "A metadata value has at most 1000 characters and no control characters",
            ));
        }
    }
    Ok(MessageInfo {
        subject: (!subject.is_empty()).then_some(subject),
        tags: tags.to_vec(),
        metadata: metadata.clone(),
    })
}

/// The message with CRLF line ends: bare LF becomes CRLF; a bare CR or a
/// NUL is refused (RFC 5322 2.3), as SMTP refuses them.
fn crlf(field: &str, text: &str) -> ApiResult<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\0' => return Err(ApiError::invalid(field, "The message contains NUL")),
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => {
                return Err(ApiError::invalid(
                    field,
                    "The message contains a CR not followed by LF",
                ))
            }
            b'\n' if i == 0 || bytes[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The message without the header fields of this name (folded lines too).
fn strip_header(msg: &[u8], name: &str) -> Vec<u8> {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(msg.len());
    let mut out = Vec::with_capacity(msg.len());
    let mut skipping = false;
    for line in msg[..end].split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line
                .iter()
                .position(|b| *b == b':')
                .is_some_and(|c| line[..c].trim_ascii().eq_ignore_ascii_case(name.as_bytes()));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&msg[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        let (n, a) = mailbox("from", "Ann Example <ann@example.test>").unwrap();
        assert_eq!(
            (n.as_deref(), a.to_string().as_str()),
            (Some("Ann Example"), "ann@example.test")
        );
        assert!(mailbox("to[0]", "x@y.test\r\nBcc: z@w.test").is_err());
        assert_eq!(
            mailbox("to[1]", "no at sign").unwrap_err().field.as_deref(),
            Some("to[1]")
        );
    }

    #[test]
    fn line_ends() {
        assert_eq!(crlf("m", "a\nb").unwrap(), b"a\r\nb\r\n");
        assert_eq!(crlf("m", "a\r\nb\r\n").unwrap(), b"a\r\nb\r\n");
        assert!(crlf("m", "a\rb").is_err());
        assert!(crlf("m", "a\0b").is_err());
    }

    #[test]
    fn bcc_is_stripped() {
        let m =
            b"From: a@b.test\r\nBcc: x@y.test,\r\n z@y.test\r\nTo: c@d.test\r\n\r\nBcc: body\r\n";
        assert_eq!(
            strip_header(m, "bcc"),
            b"From: a@b.test\r\nTo: c@d.test\r\n\r\nBcc: body\r\n"
        );
    }
}
