//! Parsing one command line into a typed [`Command`] (RFC 5321 4.1).
//!
//! The grammar work is done by `smtp_proto`; around it Tern adds what its
//! policy needs and what that parser is too lenient about:
//! - control characters and invalid UTF-8 are refused before parsing, as
//!   `smtp_proto` silently drops CRs inside a line;
//! - `<>` and `<postmaster>` are told apart (`smtp_proto` returns an empty
//!   address for both, and also for `MAIL FROM:<postmaster>` and `<"">`);
//! - address literals (`user@[192.0.2.1]`, RFC 5321 4.1.3) are accepted;
//! - BDAT chunk sizes and SIZE values are read exactly (`smtp_proto` wraps
//!   around on overflow, which would desynchronise a BDAT transfer);
//! - xtext-decoded parameter values may not hide control characters;
//! - parameters Tern does not implement are refused rather than ignored.
//!
//! Every address then goes through [`Address::parse`]. Source routes are
//! dropped (RFC 5321 C: `<@a,@b:user@c>` is `user@c`) and quoting removed
//! (`"a@b"@c` has the local part `a@b`); relay policy judges the result.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use smtp_proto::{
    Error as ProtoError, MailFrom, RcptTo, Request, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME,
    MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8,
};
pub use smtp_proto::{
    RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
use tern_core::Address;

use crate::reply::Reply;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo {
        host: String,
    },
    Helo {
        host: String,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    /// RFC 3030 2: `BDAT chunk-size [LAST]`.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy {
        arg: String,
    },
    Expn {
        arg: String,
    },
    /// `arg` is empty for a bare HELP.
    Help {
        arg: String,
    },
    /// RFC 4954 4. `initial_response` is the raw base64 text, `"="` meaning
    /// an empty response; decode it with the `sasl` functions.
    Auth {
        mechanism: Mechanism,
        initial_response: Option<String>,
    },
}

impl Command {
    /// The command verb, for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo { .. } => "EHLO",
            Command::Helo { .. } => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::StartTls => "STARTTLS",
            Command::Vrfy { .. } => "VRFY",
            Command::Expn { .. } => "EXPN",
            Command::Help { .. } => "HELP",
            Command::Auth { .. } => "AUTH",
        }
    }
}

/// The MAIL FROM path (RFC 5321 4.1.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications (RFC 5321 4.5.5).
    Null,
    Mailbox(Address),
}

/// The RCPT TO path (RFC 5321 4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept
    /// (RFC 5321 4.1.1.3, 4.5.1).
    Postmaster,
    Mailbox(Address),
}

/// The BODY parameter (RFC 6152, RFC 3030 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// The RET parameter (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// MAIL FROM parameters Tern understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// Declared size (RFC 1870); a value too large for `u64` becomes
    /// `u64::MAX`, which no limit allows.
    pub size: Option<u64>,
    pub body: Body,
    /// RFC 6531 3.4.
    pub smtputf8: bool,
    /// AUTH= (RFC 4954 5), xtext-decoded; `"<>"` when the sender is unknown.
    pub auth: Option<String>,
    /// ENVID= (RFC 3461 4.4), xtext-decoded.
    pub envid: Option<String>,
    pub ret: Option<Ret>,
}

/// RCPT TO parameters Tern understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// ORCPT=rfc822;... (RFC 3461 4.2): the xtext-decoded address.
    pub orcpt: Option<String>,
    /// NOTIFY= (RFC 3461 4.1) as `RCPT_NOTIFY_*` flags; 0 when absent.
    /// NEVER never comes with another flag.
    pub notify: u64,
}

/// A SASL mechanism name (RFC 4422 3.1), upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    Other(String),
}

/// Domain `smtp_proto` sees in place of an address literal, which it does
/// not parse; swapped back afterwards.
const LITERAL_STANDIN: &str = "address-literal.invalid";

/// Parses one command line, without its CRLF. The error is the exact reply
/// to send.
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    let text = check_line(line)?;
    let verb = text
        .trim_start_matches(' ')
        .split(' ')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let is_mail = verb == "MAIL";
    let is_path = is_mail || verb == "RCPT";
    let bad_address = || {
        if is_mail {
            Reply::bad_sender_syntax()
        } else {
            Reply::bad_recipient_syntax()
        }
    };

    let path = if is_path { find_path(text) } else { None };
    // Parameters are checked before smtp_proto sees them: it would read
    // "<a@b.c>junk" as a parameter, report a bare "SIZE" as unknown, and
    // accept extensions Tern does not implement.
    let params = match path {
        Some(path) => raw_parameters(&text[path.close + 1..], is_mail)?,
        None => Vec::new(),
    };
    let literal = match path {
        Some(path) => literal_domain(text, &path).map_err(|()| bad_address())?,
        None => None,
    };
    // SIZE is read here (parse_size); smtp_proto's reading of a value too
    // large for u64 saturates and wraps around, refusing some such values
    // with 501 and accepting others, so it is shown "0" instead.
    let shown: Cow<'_, str> = match params.iter().find(|(key, _)| key == "SIZE") {
        Some((_, Some(value)))
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) =>
        {
            // `value` is a slice of `text`, after the path.
            let start = value.as_ptr() as usize - text.as_ptr() as usize;
            let mut masked = text.to_string();
            masked.replace_range(start..start + value.len(), "0");
            Cow::Owned(masked)
        }
        _ => Cow::Borrowed(text),
    };
    let mut wire = Vec::with_capacity(shown.len() + LITERAL_STANDIN.len() + 2);
    match (path, literal) {
        (Some(path), Some(_)) => {
            let at = path.last_at.unwrap_or_default();
            wire.extend_from_slice(&shown.as_bytes()[..=at]);
            wire.extend_from_slice(LITERAL_STANDIN.as_bytes());
            wire.extend_from_slice(&shown.as_bytes()[path.close..]);
        }
        _ => wire.extend_from_slice(shown.as_bytes()),
    }
    wire.extend_from_slice(b"\r\n");

    let request = Request::parse(&mut wire.iter()).map_err(proto_error)?;
    match request {
        Request::Ehlo { host } => Ok(Command::Ehlo {
            host: host.into_owned(),
        }),
        Request::Helo { host } => Ok(Command::Helo {
            host: host.into_owned(),
        }),
        Request::Mail { from } => {
            let path = path.ok_or_else(mail_syntax)?;
            mail(text, path, literal, &params, from)
        }
        Request::Rcpt { to } => {
            let path = path.ok_or_else(rcpt_syntax)?;
            rcpt(text, path, literal, to)
        }
        Request::Data => no_arguments(text, "DATA", Command::Data),
        Request::Rset => no_arguments(text, "RSET", Command::Rset),
        Request::Quit => no_arguments(text, "QUIT", Command::Quit),
        Request::StartTls => no_arguments(text, "STARTTLS", Command::StartTls),
        Request::Noop { .. } => Ok(Command::Noop),
        Request::Vrfy { value } => Ok(Command::Vrfy {
            arg: value.into_owned(),
        }),
        Request::Expn { value } => Ok(Command::Expn {
            arg: value.into_owned(),
        }),
        Request::Help { value } => Ok(Command::Help {
            arg: value.into_owned(),
        }),
        Request::Bdat { .. } => bdat(text),
        Request::Auth { .. } => auth(text),
        // LMTP, ETRN, ATRN and BURL are not part of Tern.
        Request::Lhlo { .. }
        | Request::Etrn { .. }
        | Request::Atrn { .. }
        | Request::Burl { .. } => Err(Reply::unknown_command()),
    }
}

/// Refuses what must never reach a parser: RFC 5321 2.3.8 allows CR and LF
/// only as the line end, and a control character anywhere else is either
/// garbage or an attempt to smuggle a second command or header. Non-ASCII
/// is fine as long as it is UTF-8 (RFC 6531 3.3).
fn check_line(line: &[u8]) -> Result<&str, Reply> {
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Reply::control_characters());
    }
    let text = std::str::from_utf8(line).map_err(|_| Reply::invalid_utf8())?;
    // C1 controls (U+0080..U+009F) are no better than C0 ones.
    if text.chars().any(char::is_control) {
        return Err(Reply::control_characters());
    }
    Ok(text)
}

fn proto_error(error: ProtoError) -> Reply {
    match error {
        ProtoError::UnknownCommand => Reply::unknown_command(),
        ProtoError::InvalidSenderAddress => Reply::bad_sender_syntax(),
        ProtoError::InvalidRecipientAddress => Reply::bad_recipient_syntax(),
        ProtoError::SyntaxError { syntax } => Reply::syntax(format!("Syntax: {syntax}")),
        ProtoError::InvalidParameter { param } => {
            Reply::syntax(format!("Invalid {param} parameter"))
        }
        ProtoError::UnsupportedParameter { param } => Reply::unsupported_parameter(&param),
        _ => Reply::syntax("Syntax error"),
    }
}

fn mail_syntax() -> Reply {
    Reply::syntax("Syntax: MAIL FROM:<reverse-path> [parameters]")
}

fn rcpt_syntax() -> Reply {
    Reply::syntax("Syntax: RCPT TO:<forward-path> [parameters]")
}

/// DATA, RSET, QUIT and STARTTLS take nothing (RFC 5321 4.1.1, RFC 3207 4).
fn no_arguments(text: &str, verb: &str, command: Command) -> Result<Command, Reply> {
    if text.split(' ').filter(|t| !t.is_empty()).count() > 1 {
        return Err(Reply::syntax(format!(
            "Syntax: {verb} (no parameters allowed)"
        )));
    }
    Ok(command)
}

/// Where the `<...>` path of a MAIL or RCPT line is, as byte offsets into
/// the line.
#[derive(Debug, Clone, Copy)]
struct PathSpan {
    /// The `<`.
    open: usize,
    /// The `>` closing the path (not one inside a quoted local part).
    close: usize,
    /// The last `@` outside quotes, which starts the domain.
    last_at: Option<usize>,
}

/// Finds the path the way `smtp_proto` reads it: the first `<`, then up to
/// the first `>` outside a quoted string, backslash escaping inside quotes
/// (RFC 5321 4.1.2 Quoted-string).
fn find_path(text: &str) -> Option<PathSpan> {
    let bytes = text.as_bytes();
    let open = bytes.iter().position(|&b| b == b'<')?;
    let mut in_quote = false;
    let mut escaped = false;
    let mut last_at = None;
    for (i, &b) in bytes.iter().enumerate().skip(open + 1) {
        if escaped {
            escaped = false;
        } else if in_quote {
            match b {
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_quote = true,
                b'@' => last_at = Some(i),
                b'>' => {
                    return Some(PathSpan {
                        open,
                        close: i,
                        last_at,
                    })
                }
                _ => {}
            }
        }
    }
    None
}

/// The address literal ending the path, if the domain is one. An invalid
/// literal is an error: only IPv4 and `IPv6:` forms are accepted
/// (RFC 5321 4.1.3); general address literals have no use.
fn literal_domain<'t>(text: &'t str, path: &PathSpan) -> Result<Option<&'t str>, ()> {
    let Some(at) = path.last_at else {
        return Ok(None);
    };
    let domain = &text[at + 1..path.close];
    if !domain.starts_with('[') {
        return Ok(None);
    }
    let inner = domain
        .strip_prefix('[')
        .and_then(|d| d.strip_suffix(']'))
        .ok_or(())?;
    let valid = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    };
    if valid {
        Ok(Some(domain))
    } else {
        Err(())
    }
}

/// Turns the address `smtp_proto` returned into an [`Address`], putting
/// back the literal it was shown a stand-in for.
fn to_address(parsed: &str, literal: Option<&str>) -> Option<Address> {
    let restored: Cow<'_, str> = match literal {
        Some(literal) => {
            let local = parsed.strip_suffix(LITERAL_STANDIN)?.strip_suffix('@')?;
            Cow::Owned(format!("{local}@{literal}"))
        }
        None => Cow::Borrowed(parsed),
    };
    Address::parse(&restored).ok()
}

fn mail(
    text: &str,
    path: PathSpan,
    literal: Option<&str>,
    raw: &[(String, Option<&str>)],
    from: MailFrom<Cow<'_, str>>,
) -> Result<Command, Reply> {
    let inner = &text[path.open + 1..path.close];
    let from_path = if from.address.is_empty() {
        // smtp_proto also returns "" for <postmaster> and <"">: only the
        // literal <> is the null path.
        if !inner.is_empty() {
            return Err(Reply::bad_sender_syntax());
        }
        ReversePath::Null
    } else {
        let address = to_address(&from.address, literal).ok_or_else(Reply::bad_sender_syntax)?;
        ReversePath::Mailbox(address)
    };

    let mut params = MailParams::default();
    if let Some((_, value)) = raw.iter().find(|(key, _)| key == "SIZE") {
        params.size = Some(parse_size(*value)?);
    }
    params.body = if from.flags & MAIL_BODY_BINARYMIME != 0 {
        Body::BinaryMime
    } else if from.flags & MAIL_BODY_8BITMIME != 0 {
        Body::EightBitMime
    } else {
        Body::SevenBit
    };
    params.smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
    params.ret = if from.flags & MAIL_RET_FULL != 0 {
        Some(Ret::Full)
    } else if from.flags & MAIL_RET_HDRS != 0 {
        Some(Ret::Headers)
    } else {
        None
    };
    params.auth = from.auth.map(decoded).transpose()?;
    params.envid = from.env_id.map(decoded).transpose()?;
    Ok(Command::Mail {
        from: from_path,
        params,
    })
}

fn rcpt(
    text: &str,
    path: PathSpan,
    literal: Option<&str>,
    to: RcptTo<Cow<'_, str>>,
) -> Result<Command, Reply> {
    let inner = &text[path.open + 1..path.close];
    let to_path = if to.address.is_empty() {
        // smtp_proto returns "" for <>, <postmaster> and <"">.
        if !inner.eq_ignore_ascii_case("postmaster") {
            return Err(Reply::bad_recipient_syntax());
        }
        ForwardPath::Postmaster
    } else {
        let address = to_address(&to.address, literal).ok_or_else(Reply::bad_recipient_syntax)?;
        ForwardPath::Mailbox(address)
    };

    let notify = to.flags
        & (RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY | RCPT_NOTIFY_NEVER);
    // RFC 3461 4.1: NEVER excludes the other values.
    if notify & RCPT_NOTIFY_NEVER != 0 && notify != RCPT_NOTIFY_NEVER {
        return Err(Reply::syntax("Invalid NOTIFY parameter"));
    }
    let params = RcptParams {
        orcpt: to.orcpt.map(decoded).transpose()?,
        notify,
    };
    Ok(Command::Rcpt {
        to: to_path,
        params,
    })
}

/// An xtext value after decoding (RFC 3461 4): `+0D+0A` and friends must
/// not get past the control character check.
fn decoded(value: Cow<'_, str>) -> Result<String, Reply> {
    if value.chars().any(char::is_control) {
        return Err(Reply::control_characters());
    }
    Ok(value.into_owned())
}

/// Splits what follows the path into `(KEYWORD, value)` pairs
/// (RFC 5321 4.1.2 Mail-parameters, esmtp-param), refusing malformed,
/// repeated and unimplemented ones.
fn raw_parameters(rest: &str, is_mail: bool) -> Result<Vec<(String, Option<&str>)>, Reply> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(if is_mail {
            mail_syntax()
        } else {
            rcpt_syntax()
        });
    }
    let mut params: Vec<(String, Option<&str>)> = Vec::new();
    for token in rest.split(' ').filter(|t| !t.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (token, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let key_ok = key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531 3.3)
        let value_ok = value.is_none_or(|v| !v.is_empty() && !v.contains('='));
        if !key_ok || !value_ok {
            return Err(Reply::syntax("Syntax: malformed parameter"));
        }
        let key = key.to_ascii_uppercase();
        // Whether the keyword takes a value; unknown ones are refused
        // rather than ignored (RFC 5321 4.1.1.11), including those
        // smtp_proto parses but Tern does not implement (REQUIRETLS,
        // MT-PRIORITY, HOLDFOR, ...).
        let takes_value = match (is_mail, key.as_str()) {
            (true, "SIZE" | "BODY" | "AUTH" | "ENVID" | "RET") => true,
            (true, "SMTPUTF8") => false,
            (false, "NOTIFY" | "ORCPT") => true,
            _ => return Err(Reply::unsupported_parameter(&key)),
        };
        if takes_value != value.is_some() {
            return Err(Reply::syntax(format!("Invalid {key} parameter")));
        }
        if params.iter().any(|(k, _)| *k == key) {
            return Err(Reply::syntax(format!("Duplicate {key} parameter")));
        }
        params.push((key, value));
    }
    Ok(params)
}

/// SIZE=value (RFC 1870 4): digits only; saturates rather than wrapping.
fn parse_size(value: Option<&str>) -> Result<u64, Reply> {
    match value {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Ok(v
            .bytes()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX)),
        _ => Err(Reply::syntax("Invalid SIZE parameter")),
    }
}

/// `BDAT SP chunk-size [SP end-marker]` (RFC 3030 2), read here because an
/// exact size is essential: reading the wrong number of octets would turn
/// message content into commands.
fn bdat(text: &str) -> Result<Command, Reply> {
    let syntax = || Reply::syntax("Syntax: BDAT chunk-size [LAST]");
    let mut tokens = text.split(' ').filter(|t| !t.is_empty()).skip(1);
    let size = tokens.next().ok_or_else(syntax)?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let size: u64 = size.parse().map_err(|_| syntax())?;
    let last = match tokens.next() {
        None => false,
        Some(marker) if marker.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(syntax()),
    };
    if tokens.next().is_some() {
        return Err(syntax());
    }
    Ok(Command::Bdat { size, last })
}

/// `AUTH SP mechanism [SP initial-response]` (RFC 4954 4), read here because
/// `smtp_proto` keeps no name for mechanisms it does not know.
fn auth(text: &str) -> Result<Command, Reply> {
    let syntax = || Reply::syntax("Syntax: AUTH mechanism [initial-response]");
    let mut tokens = text.split(' ').filter(|t| !t.is_empty()).skip(1);
    let name = tokens.next().ok_or_else(syntax)?;
    // RFC 4422 3.1: 1 to 20 of upper-case letters, digits, "-" and "_".
    if name.len() > 20
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(syntax());
    }
    let name = name.to_ascii_uppercase();
    let initial_response = tokens.next().map(str::to_string);
    if tokens.next().is_some() {
        return Err(syntax());
    }
    let mechanism = match name.as_str() {
        "PLAIN" => Mechanism::Plain,
        "LOGIN" => Mechanism::Login,
        _ => Mechanism::Other(name),
    };
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

#[cfg(test)]
mod tests;
