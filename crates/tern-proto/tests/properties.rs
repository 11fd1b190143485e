//! Property tests for the wire layer: every reader must survive any input,
//! and what Tern writes must read back as what it meant.
//!
//! - commands: parse ∘ format is the identity on valid commands, and the
//!   parser neither panics nor lets a control character through on any
//!   input;
//! - `LineBuffer`, `DataReader`, `ChunkChecker` and the SASL decoders take
//!   arbitrary bytes, split anywhere, and agree with simple statements of
//!   their rules (the end of data is the first CRLF "." CRLF and nothing
//!   else; BDAT refuses what DATA refuses);
//! - dot-stuffing: whatever the body, the outbound form has CRLF line ends
//!   only, one end-of-data line (the last), and the strict reader gives the
//!   body back.
//!
//! Each property runs 256 cases by default, a few seconds for the file;
//! `PROPTEST_CASES=20000 cargo test -p tern-proto --test properties` runs
//! more.

use std::net::{Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tern_core::Address;
use tern_proto::{
    decode_base64, decode_login_field, decode_plain, dot_stuff, parse_command, Body, ChunkChecker,
    Command, DataError, DataReader, ForwardPath, LineBuffer, LineError, MailParams, Mechanism,
    RcptParams, Reply, Ret, ReversePath, SaslError, Stuffer, RCPT_NOTIFY_DELAY,
    RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};

/// 256 cases unless `PROPTEST_CASES` says otherwise; failures are printed
/// (shrunk), not written to files in the source tree.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------

/// `s` with each ASCII letter upper- or lower-cased by the bits of `mask`:
/// verbs and keywords are case-insensitive (RFC 5321 2.4).
fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn cased(s: &'static str) -> impl Strategy<Value = String> {
    any::<u64>().prop_map(move |mask| recase(s, mask))
}

/// RFC 5321 4.1.2 atext, plus some UTF-8 (RFC 6531 3.3).
fn atom() -> impl Strategy<Value = String> {
    const ATEXT: &str =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
    let ascii: Vec<char> = ATEXT.chars().collect();
    let utf8 = vec!['é', 'ü', 'ß', 'ж', '中', '😀'];
    prop::collection::vec(
        prop_oneof![
            12 => prop::sample::select(ascii),
            1 => prop::sample::select(utf8),
        ],
        1..8,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// A local part as written on the wire, and as Tern keeps it (quoting
/// removed).
fn local_part() -> impl Strategy<Value = (String, String)> {
    let dot_atom = prop::collection::vec(atom(), 1..4).prop_map(|atoms| {
        let s = atoms.join(".");
        (s.clone(), s)
    });
    // Quoted-string: any printable ASCII, `"` and `\` escaped, and any other
    // character optionally escaped too (quoted-pairSMTP).
    let quoted = prop::collection::vec((prop::char::range(' ', '~'), any::<bool>()), 1..16)
        .prop_map(|chars| {
            let mut wire = String::from("\"");
            let mut kept = String::new();
            for (c, escape) in chars {
                if c == '"' || c == '\\' || escape {
                    wire.push('\\');
                }
                wire.push(c);
                kept.push(c);
            }
            wire.push('"');
            (wire, kept)
        });
    prop_oneof![3 => dot_atom, 1 => quoted]
}

/// A host name: letters, digits and inner hyphens, any case, sometimes a
/// UTF-8 label.
fn host_name() -> impl Strategy<Value = String> {
    let label = prop_oneof![
        8 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?",
        1 => Just("bücher".to_string()),
    ];
    prop::collection::vec(label, 1..4).prop_map(|labels| labels.join("."))
}

/// An address literal (RFC 5321 4.1.3), IPv4 or IPv6 with its tag in any
/// case.
fn address_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|ip| format!("[{}]", Ipv4Addr::from(ip))),
        (any::<[u16; 8]>(), cased("IPv6:"))
            .prop_map(|(ip, tag)| format!("[{tag}{}]", Ipv6Addr::from(ip))),
    ]
}

/// A mailbox as written inside `<...>` (sometimes behind a source route,
/// which is dropped, RFC 5321 C), and the address Tern must make of it.
fn mailbox() -> impl Strategy<Value = (String, Address)> {
    let domain = prop_oneof![4 => host_name(), 1 => address_literal()];
    let route = prop::option::weighted(0.15, prop::collection::vec(host_name(), 1..3));
    (local_part(), domain, route).prop_map(|((wire_local, kept_local), domain, route)| {
        let mut wire = String::new();
        if let Some(route) = route {
            let hops: Vec<String> = route.iter().map(|h| format!("@{h}")).collect();
            wire.push_str(&hops.join(","));
            wire.push(':');
        }
        wire.push_str(&format!("{wire_local}@{domain}"));
        let address = Address::parse(&format!("{kept_local}@{domain}"))
            .expect("generated addresses are valid");
        (wire, address)
    })
}

/// xtext (RFC 3461 4): what the value means, and one way to write it.
/// `+` and `=`, and anything outside `!`..`~`, must be hex-encoded; other
/// characters may be.
fn xtext(len: std::ops::Range<usize>) -> impl Strategy<Value = (String, String)> {
    prop::collection::vec(
        (prop::char::range(' ', '~'), any::<bool>(), any::<bool>()),
        len,
    )
    .prop_map(|chars| {
        let mut wire = String::new();
        let mut value = String::new();
        for (c, encode, lower) in chars {
            if c == '+' || c == '=' || c == ' ' || encode {
                let hex = format!("+{:02X}", c as u32);
                wire.push_str(&if lower { hex.to_lowercase() } else { hex });
            } else {
                wire.push(c);
            }
            value.push(c);
        }
        (wire, value)
    })
}

/// SIZE=: the digits and the value Tern reads from them.
fn size_value() -> impl Strategy<Value = (String, u64)> {
    prop_oneof![
        any::<u64>().prop_map(|n| (n.to_string(), n)),
        (0usize..4, any::<u32>())
            .prop_map(|(zeros, n)| ("0".repeat(zeros) + &n.to_string(), n as u64)),
        // Too large for u64: Tern saturates, and no limit allows it.
        "[0-9]{19,40}".prop_map(|s| {
            let n = s.parse().unwrap_or(u64::MAX);
            (s, n)
        }),
    ]
}

/// One MAIL FROM parameter as written, and what it sets.
#[derive(Debug, Clone)]
enum MailParam {
    Size(u64),
    Body(Body),
    SmtpUtf8,
    Auth(String),
    Envid(String),
    Ret(Ret),
}

fn mail_params() -> impl Strategy<Value = Vec<(String, MailParam)>> {
    let size = (cased("SIZE"), size_value())
        .prop_map(|(k, (digits, n))| (format!("{k}={digits}"), MailParam::Size(n)));
    let body = (
        cased("BODY"),
        prop_oneof![
            cased("7BIT").prop_map(|v| (v, Body::SevenBit)),
            cased("8BITMIME").prop_map(|v| (v, Body::EightBitMime)),
            cased("BINARYMIME").prop_map(|v| (v, Body::BinaryMime)),
        ],
    )
        .prop_map(|(k, (v, b))| (format!("{k}={v}"), MailParam::Body(b)));
    let smtputf8 = cased("SMTPUTF8").prop_map(|k| (k, MailParam::SmtpUtf8));
    let auth = (
        cased("AUTH"),
        prop_oneof![
            1 => Just(("<>".to_string(), "<>".to_string())),
            3 => xtext(1..40),
        ],
    )
        .prop_map(|(k, (wire, value))| (format!("{k}={wire}"), MailParam::Auth(value)));
    // smtp_proto takes ENVID values of 1 to 100 octets (RFC 3461 4.4).
    let envid = (cased("ENVID"), xtext(1..100))
        .prop_map(|(k, (wire, value))| (format!("{k}={wire}"), MailParam::Envid(value)));
    let ret = (
        cased("RET"),
        prop_oneof![
            cased("FULL").prop_map(|v| (v, Ret::Full)),
            cased("HDRS").prop_map(|v| (v, Ret::Headers)),
        ],
    )
        .prop_map(|(k, (v, r))| (format!("{k}={v}"), MailParam::Ret(r)));
    (
        prop::option::of(size),
        prop::option::of(body),
        prop::option::of(smtputf8),
        prop::option::of(auth),
        prop::option::of(envid),
        prop::option::of(ret),
    )
        .prop_map(|(a, b, c, d, e, f)| [a, b, c, d, e, f].into_iter().flatten().collect::<Vec<_>>())
        .prop_shuffle()
}

/// One or more spaces, as some clients send between parameters.
fn spaces() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(" ".to_string()), 1 => Just("  ".to_string())]
}

/// `tokens` joined by the given separators, each after a leading one.
fn join_params(tokens: &[String], seps: &[String]) -> String {
    tokens
        .iter()
        .zip(seps.iter().cycle())
        .map(|(t, sep)| format!("{sep}{t}"))
        .collect()
}

fn mail_command() -> impl Strategy<Value = (String, Command)> {
    let path = prop_oneof![
        1 => Just(("".to_string(), ReversePath::Null)),
        6 => mailbox().prop_map(|(wire, a)| (wire, ReversePath::Mailbox(a))),
    ];
    (
        cased("MAIL FROM:"),
        prop::bool::weighted(0.2),
        path,
        mail_params(),
        prop::collection::vec(spaces(), 1..4),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(verb, space, (wire, from), params, seps, trailing)| {
            let tokens: Vec<String> = params.iter().map(|(t, _)| t.clone()).collect();
            let mut line = format!("{verb}{}<{wire}>", if space { " " } else { "" });
            line.push_str(&join_params(&tokens, &seps));
            if trailing {
                line.push(' ');
            }
            let mut expected = MailParams::default();
            for (_, p) in params {
                match p {
                    MailParam::Size(n) => expected.size = Some(n),
                    MailParam::Body(b) => expected.body = b,
                    MailParam::SmtpUtf8 => expected.smtputf8 = true,
                    MailParam::Auth(v) => expected.auth = Some(v),
                    MailParam::Envid(v) => expected.envid = Some(v),
                    MailParam::Ret(r) => expected.ret = Some(r),
                }
            }
            (
                line,
                Command::Mail {
                    from,
                    params: expected,
                },
            )
        })
}

fn rcpt_command() -> impl Strategy<Value = (String, Command)> {
    let path = prop_oneof![
        1 => cased("postmaster").prop_map(|p| (p, ForwardPath::Postmaster)),
        6 => mailbox().prop_map(|(wire, a)| (wire, ForwardPath::Mailbox(a))),
    ];
    let notify = prop_oneof![
        1 => cased("NEVER").prop_map(|v| (v, RCPT_NOTIFY_NEVER)),
        3 => prop::sample::subsequence(
            vec![
                ("SUCCESS", RCPT_NOTIFY_SUCCESS),
                ("FAILURE", RCPT_NOTIFY_FAILURE),
                ("DELAY", RCPT_NOTIFY_DELAY),
            ],
            1..=3,
        )
        .prop_shuffle()
        .prop_flat_map(|flags| {
            any::<u64>().prop_map(move |mask| {
                let names: Vec<String> = flags.iter().map(|(n, _)| recase(n, mask)).collect();
                (names.join(","), flags.iter().fold(0, |acc, (_, f)| acc | f))
            })
        }),
    ];
    let notify = (cased("NOTIFY"), notify).prop_map(|(k, (v, flags))| (format!("{k}={v}"), flags));
    let orcpt = (cased("ORCPT"), cased("rfc822"), xtext(1..60))
        .prop_map(|(k, t, (wire, value))| (format!("{k}={t};{wire}"), value));
    (
        cased("RCPT TO:"),
        prop::bool::weighted(0.2),
        path,
        prop::option::of(notify),
        prop::option::of(orcpt),
        any::<bool>(),
        prop::collection::vec(spaces(), 1..3),
    )
        .prop_map(|(verb, space, (wire, to), notify, orcpt, swap, seps)| {
            let mut tokens = Vec::new();
            let mut expected = RcptParams::default();
            if let Some((t, flags)) = notify {
                tokens.push(t);
                expected.notify = flags;
            }
            if let Some((t, value)) = orcpt {
                tokens.push(t);
                expected.orcpt = Some(value);
            }
            if swap {
                tokens.reverse();
            }
            let mut line = format!("{verb}{}<{wire}>", if space { " " } else { "" });
            line.push_str(&join_params(&tokens, &seps));
            (
                line,
                Command::Rcpt {
                    to,
                    params: expected,
                },
            )
        })
}

/// Every other command, as written and as parsed.
fn other_command() -> impl Strategy<Value = (String, Command)> {
    // What a client may put after EHLO/HELO: smtp_proto takes one token.
    let host = prop_oneof![
        host_name(),
        address_literal(),
        "[!-~]{1,40}".prop_map(|s| s.to_string()),
    ];
    // VRFY, EXPN and HELP take one word here; quotes have their own rules.
    let word = "[!#-~]{1,60}";
    let mechanism = "[A-Za-z0-9_-]{1,20}".prop_map(|name| {
        let upper = name.to_ascii_uppercase();
        let mechanism = match upper.as_str() {
            "PLAIN" => Mechanism::Plain,
            "LOGIN" => Mechanism::Login,
            _ => Mechanism::Other(upper),
        };
        (name, mechanism)
    });
    let mechanism = prop_oneof![
        cased("PLAIN").prop_map(|n| (n, Mechanism::Plain)),
        cased("LOGIN").prop_map(|n| (n, Mechanism::Login)),
        mechanism,
    ];
    let initial = prop::option::of(prop_oneof![
        1 => Just("=".to_string()),
        4 => prop::collection::vec(any::<u8>(), 1..200).prop_map(|b| STANDARD.encode(b)),
    ]);
    prop_oneof![
        (cased("EHLO"), host.clone())
            .prop_map(|(v, h)| (format!("{v} {h}"), Command::Ehlo { host: h })),
        (cased("HELO"), host).prop_map(|(v, h)| (format!("{v} {h}"), Command::Helo { host: h })),
        (cased("VRFY"), word).prop_map(|(v, a)| (format!("{v} {a}"), Command::Vrfy { arg: a })),
        (cased("EXPN"), word).prop_map(|(v, a)| (format!("{v} {a}"), Command::Expn { arg: a })),
        (cased("HELP"), prop::option::of(word)).prop_map(|(v, a)| match a {
            Some(a) => (format!("{v} {a}"), Command::Help { arg: a }),
            None => (v, Command::Help { arg: String::new() }),
        }),
        (cased("NOOP"), "[ -~]{0,60}").prop_map(|(v, a)| (format!("{v} {a}"), Command::Noop)),
        // BDAT 18446744073709551615 is refused (501) by smtp_proto; a chunk
        // that size could not be sent anyway.
        (cased("BDAT"), 0..u64::MAX, prop::option::of(cased("LAST"))).prop_map(
            |(v, size, last)| {
                let line = match &last {
                    Some(l) => format!("{v} {size} {l}"),
                    None => format!("{v} {size}"),
                };
                (
                    line,
                    Command::Bdat {
                        size,
                        last: last.is_some(),
                    },
                )
            }
        ),
        (cased("AUTH"), mechanism, initial).prop_map(|(v, (name, mechanism), initial)| {
            let line = match &initial {
                Some(r) => format!("{v} {name} {r}"),
                None => format!("{v} {name}"),
            };
            (
                line,
                Command::Auth {
                    mechanism,
                    initial_response: initial,
                },
            )
        }),
        (cased("DATA"), "( {0,2})").prop_map(|(v, s)| (v + &s, Command::Data)),
        (cased("RSET"), "( {0,2})").prop_map(|(v, s)| (v + &s, Command::Rset)),
        (cased("QUIT"), "( {0,2})").prop_map(|(v, s)| (v + &s, Command::Quit)),
        (cased("STARTTLS"), "( {0,2})").prop_map(|(v, s)| (v + &s, Command::StartTls)),
    ]
}

fn any_command() -> impl Strategy<Value = (String, Command)> {
    prop_oneof![2 => mail_command(), 2 => rcpt_command(), 3 => other_command()]
}

/// Bytes that look like SMTP often enough to get past the first checks.
fn smtp_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let verbs: Vec<&'static [u8]> = vec![
        b"MAIL FROM:",
        b"RCPT TO:",
        b"EHLO ",
        b"HELO ",
        b"BDAT ",
        b"AUTH ",
        b"DATA",
        b"VRFY ",
        b"EXPN ",
        b"HELP",
        b"NOOP",
        b"STARTTLS",
        b"RSET",
        b"QUIT",
    ];
    let pieces: Vec<&'static [u8]> = vec![
        b"<",
        b">",
        b"<>",
        b"\"",
        b"\\",
        b"@",
        b".",
        b":",
        b",",
        b" ",
        b"  ",
        b"[",
        b"]",
        b"IPv6:",
        b"::1",
        b"127.0.0.1",
        b"a",
        b"b.c",
        b"postmaster",
        b"SIZE=",
        b"BODY=",
        b"8BITMIME",
        b"SMTPUTF8",
        b"AUTH=",
        b"ENVID=",
        b"RET=",
        b"FULL",
        b"NOTIFY=",
        b"NEVER",
        b"SUCCESS,",
        b"ORCPT=",
        b"rfc822;",
        b"=",
        b"+",
        b"+0D",
        b"+0A",
        b"+00",
        b"+7F",
        b"+C2+85",
        b"99999999999999999999",
        b"18446744073709551615",
        b"0",
        b"LAST",
        b"PLAIN",
        b"LOGIN",
        "ü".as_bytes(),
    ];
    // Control characters, C1 controls and invalid UTF-8.
    let bad: Vec<&'static [u8]> = vec![
        b"\r",
        b"\n",
        b"\0",
        b"\x01",
        b"\x1b",
        b"\t",
        b"\x7f",
        b"\xc2\x85",
        b"\xff",
        b"\xe4",
    ];
    (
        prop::option::weighted(0.9, prop::sample::select(verbs)),
        prop::collection::vec(
            prop_oneof![
                20 => prop::sample::select(pieces),
                2 => prop::sample::select(bad),
            ]
            .prop_map(|p| p.to_vec()),
            0..16,
        ),
    )
        .prop_map(|(verb, rest)| [verb.unwrap_or_default().to_vec(), rest.concat()].concat())
}

/// Message-like bytes: runs of text (long enough to cross line limits)
/// and dots between line ends that are mostly CRLF, with the occasional
/// bare CR, bare LF, NUL, end-of-data line or arbitrary octet.
fn wire_bytes(max_tokens: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => (1usize..40).prop_map(|n| vec![b'a'; n]),
            6 => Just(b"\r\n".to_vec()),
            3 => Just(b".".to_vec()),
            1 => Just(b"\r".to_vec()),
            1 => Just(b"\n".to_vec()),
            1 => Just(vec![0u8]),
            1 => Just(b"\r\n.\r\n".to_vec()),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ],
        0..max_tokens,
    )
    .prop_map(|tokens| tokens.concat())
}

/// A well-formed body: lines of arbitrary octets (no CR, LF or NUL, many
/// starting with dots) joined by CRLF, with or without a final CRLF.
fn clean_body() -> impl Strategy<Value = Vec<u8>> {
    text_lines().prop_map(|(lines, final_crlf)| {
        let mut body = lines.join(&b"\r\n"[..]);
        if final_crlf && !lines.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        body
    })
}

/// Cut points into a buffer of length `len` (sorted, in range).
fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// `input` split at `cuts`.
fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        out.push(&input[start..c]);
        start = c;
    }
    out
}

/// Every string a parsed command carries.
fn strings_of(command: &Command) -> Vec<String> {
    let mut v = Vec::new();
    match command {
        Command::Ehlo { host } | Command::Helo { host } => v.push(host.clone()),
        Command::Vrfy { arg } | Command::Expn { arg } | Command::Help { arg } => {
            v.push(arg.clone())
        }
        Command::Mail { from, params } => {
            if let ReversePath::Mailbox(a) = from {
                v.push(a.to_string());
            }
            v.extend(params.auth.clone());
            v.extend(params.envid.clone());
        }
        Command::Rcpt { to, params } => {
            if let ForwardPath::Mailbox(a) = to {
                v.push(a.to_string());
            }
            v.extend(params.orcpt.clone());
        }
        Command::Auth {
            mechanism,
            initial_response,
        } => {
            if let Mechanism::Other(name) = mechanism {
                v.push(name.clone());
            }
            v.extend(initial_response.clone());
        }
        Command::Data
        | Command::Bdat { .. }
        | Command::Rset
        | Command::Noop
        | Command::Quit
        | Command::StartTls => {}
    }
    v
}

/// A reply must be CRLF-terminated lines of at most 512 octets with no
/// other CR or LF, each starting with the code (RFC 5321 4.2, 4.5.3.1.5).
fn assert_well_formed(reply: &Reply) -> Result<(), TestCaseError> {
    let bytes = reply.to_bytes();
    prop_assert!(bytes.ends_with(b"\r\n"));
    let text = std::str::from_utf8(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let lines: Vec<&str> = text[..text.len() - 2].split("\r\n").collect();
    prop_assert_eq!(lines.len(), reply.lines.len().max(1));
    let code = format!("{:03}", reply.code);
    for (i, line) in lines.iter().enumerate() {
        prop_assert!(line.len() + 2 <= 512, "line of {} octets", line.len() + 2);
        prop_assert!(!line.contains(['\r', '\n']), "{:?}", line);
        prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
        prop_assert!(line.starts_with(&code), "{:?}", line);
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        prop_assert!(
            line.len() == 3 || line[3..].starts_with(sep),
            "separator in {:?}",
            line
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// parse ∘ format: a valid command, written as a client may write it,
    /// parses to the command meant.
    #[test]
    fn commands_round_trip((line, expected) in any_command()) {
        match parse_command(line.as_bytes()) {
            Ok(parsed) => prop_assert_eq!(parsed, expected, "C: {}", line),
            Err(reply) => prop_assert!(false, "C: {}\nS: {}\nexpected {:?}", line, reply, expected),
        }
    }

    /// The same, with the command cut out of a byte stream by the
    /// LineBuffer at the default limit, however the stream was split.
    #[test]
    fn commands_round_trip_through_the_line_buffer(
        commands in prop::collection::vec(any_command(), 1..6),
        raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for (line, _) in &commands {
            stream.extend_from_slice(line.as_bytes());
            stream.extend_from_slice(b"\r\n");
        }
        let mut buffer = LineBuffer::new(4096);
        let mut got = Vec::new();
        for piece in pieces(&stream, &cuts(stream.len(), &raw_cuts)) {
            buffer.push(piece);
            while let Some(line) = buffer.next_line() {
                let line = line.map_err(|e| TestCaseError::fail(e.to_string()))?;
                got.push(parse_command(&line).map_err(|r| TestCaseError::fail(r.to_string()))?);
            }
        }
        prop_assert!(buffer.is_empty());
        let expected: Vec<Command> = commands.into_iter().map(|(_, c)| c).collect();
        prop_assert_eq!(got, expected);
    }

    /// Any bytes at all: no panic; a command that parses carries no
    /// control character anywhere (no header or command injection), and a
    /// refusal is a well-formed 5xx reply line.
    #[test]
    fn parser_takes_any_bytes(line in prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..600),
        3 => smtp_ish_bytes(),
    ]) {
        match parse_command(&line) {
            Ok(command) => {
                prop_assert!(!line.iter().any(|&b| b < 0x20 || b == 0x7f));
                prop_assert!(std::str::from_utf8(&line).is_ok());
                for s in strings_of(&command) {
                    prop_assert!(!s.chars().any(char::is_control), "{:?} in {:?}", s, command);
                }
            }
            Err(reply) => {
                prop_assert!((500..=555).contains(&reply.code), "{}", reply);
                prop_assert_eq!(reply.lines.len(), 1);
                assert_well_formed(&reply)?;
            }
        }
    }

    /// A control character hidden in xtext (`+0D+0A`, `+00`, ...) is
    /// refused like a raw one: decoding must not let it back in.
    #[test]
    fn xtext_cannot_hide_control_characters(
        (path, _) in mailbox(),
        (before, _) in xtext(0..10),
        (after, _) in xtext(0..10),
        control in prop_oneof![0u8..0x20, Just(0x7f)],
        lower in any::<bool>(),
        which in 0u8..3,
    ) {
        let hex = format!("+{control:02X}");
        let hex = if lower { hex.to_lowercase() } else { hex };
        let value = format!("{before}{hex}{after}");
        let line = match which {
            0 => format!("MAIL FROM:<{path}> ENVID={value}"),
            1 => format!("MAIL FROM:<{path}> AUTH={value}"),
            _ => format!("RCPT TO:<{path}> ORCPT=rfc822;{value}"),
        };
        match parse_command(line.as_bytes()) {
            Ok(command) => prop_assert!(false, "C: {}\nparsed as {:?}", line, command),
            Err(reply) => prop_assert_eq!(reply.code, 501, "C: {}\nS: {}", line, reply),
        }
    }

    /// Valid commands with one byte changed, inserted or removed: no panic,
    /// and still no control character in anything accepted.
    #[test]
    fn parser_takes_mutated_commands(
        (line, _) in any_command(),
        at in any::<usize>(),
        byte in prop_oneof![Just(b'\r'), Just(b'\n'), Just(0u8), Just(b'"'), Just(b'\\'),
                            Just(b'<'), Just(b'>'), Just(b'@'), Just(b' '), Just(b'+'),
                            any::<u8>()],
        how in 0u8..3,
    ) {
        let mut bytes = line.into_bytes();
        let at = at % (bytes.len() + 1);
        match how {
            0 => bytes.insert(at, byte),
            1 if at < bytes.len() => bytes[at] = byte,
            _ if at < bytes.len() => { bytes.remove(at); }
            _ => bytes.push(byte),
        }
        if let Ok(command) = parse_command(&bytes) {
            for s in strings_of(&command) {
                prop_assert!(!s.chars().any(char::is_control), "{:?} in {:?}", s, command);
            }
        }
    }
}

// ---------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Reply text is often built from client input: whatever it holds, the
    /// reply on the wire is well-formed lines, so a client cannot forge a
    /// reply line.
    #[test]
    fn replies_are_well_formed(
        code in 200u16..=599,
        enhanced in prop_oneof![Just(String::new()), "[245]\\.[0-9]{1,3}\\.[0-9]{1,3}"],
        lines in prop::collection::vec(
            prop::collection::vec(prop_oneof![
                4 => any::<char>(),
                1 => prop::sample::select(vec!['\r', '\n', '\0', '\t', '\u{1b}', '\u{7f}', '\u{85}']),
            ], 0..40).prop_map(|c| c.into_iter().collect::<String>()),
            0..4,
        ),
        long in prop::option::of(("[a-zé中]", 100usize..700).prop_map(|(s, n)| s.repeat(n))),
    ) {
        let mut lines = lines;
        lines.extend(long);
        let reply = Reply::multiline(code, &enhanced, lines);
        assert_well_formed(&reply)?;
        // Display is the same text with LF between lines.
        let shown = reply.to_string();
        let wire = String::from_utf8(reply.to_bytes()).unwrap();
        prop_assert_eq!(shown, wire.trim_end_matches("\r\n").replace("\r\n", "\n"));
    }
}

// ---------------------------------------------------------------------
// LineBuffer
// ---------------------------------------------------------------------

/// The LineBuffer's rules for a stream read to its end: each LF-terminated
/// line is refused when longer than `max_len` (CRLF counted), refused when
/// its LF has no CR before it, and returned without CRLF otherwise; an
/// unterminated tail already as long as `max_len` is refused too.
fn lines_reference(input: &[u8], max_len: usize) -> Vec<Result<Vec<u8>, LineError>> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        out.push(if lf + 1 > max_len {
            Err(LineError::TooLong)
        } else if lf == 0 || rest[lf - 1] != b'\r' {
            Err(LineError::BareLf)
        } else {
            Ok(rest[..lf - 1].to_vec())
        });
        rest = &rest[lf + 1..];
    }
    if rest.len() >= max_len {
        out.push(Err(LineError::TooLong));
    }
    out
}

#[derive(Debug, Clone)]
enum LineOp {
    Push(Vec<u8>),
    SetMax(usize),
    TakeRest,
}

proptest! {
    #![proptest_config(config())]

    /// However the stream is split into pushes, the lines and refusals
    /// are those of the reference, in order; over-long lines are reported
    /// once each.
    #[test]
    fn line_buffer_matches_reference(
        input in prop_oneof![3 => wire_bytes(60), 1 => prop::collection::vec(any::<u8>(), 0..300)],
        max_len in 2usize..40,
        raw_cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut buffer = LineBuffer::new(max_len);
        let mut got = Vec::new();
        for piece in pieces(&input, &cuts(input.len(), &raw_cuts)) {
            buffer.push(piece);
            while let Some(line) = buffer.next_line() {
                got.push(line);
            }
        }
        prop_assert_eq!(got, lines_reference(&input, max_len));
    }

    /// Any sequence of operations: no panic, no line longer than the limit
    /// in force, no line holding an LF, and nothing handed out twice or
    /// lost: when no line was refused, the lines returned (with their
    /// CRLF), what take_rest gave back and what is still buffered are
    /// exactly what was pushed, in order.
    #[test]
    fn line_buffer_takes_any_operations(
        max_len in 0usize..64,
        ops in prop::collection::vec(prop_oneof![
            6 => wire_bytes(12).prop_map(LineOp::Push),
            1 => (0usize..64).prop_map(LineOp::SetMax),
            1 => Just(LineOp::TakeRest),
        ], 0..16),
    ) {
        let mut buffer = LineBuffer::new(max_len);
        let mut limit = max_len.max(2);
        let mut pushed = Vec::new();
        let mut seen = Vec::new();
        let mut too_long = false;
        let mut bare_lf = false;
        for op in ops {
            match op {
                LineOp::Push(bytes) => {
                    pushed.extend_from_slice(&bytes);
                    buffer.push(&bytes);
                }
                LineOp::SetMax(n) => {
                    buffer.set_max_len(n);
                    limit = n.max(2);
                }
                LineOp::TakeRest => seen.extend(buffer.take_rest()),
            }
            while let Some(line) = buffer.next_line() {
                match line {
                    Ok(line) => {
                        prop_assert!(line.len() + 2 <= limit);
                        prop_assert!(!line.contains(&b'\n'));
                        seen.extend_from_slice(&line);
                        seen.extend_from_slice(b"\r\n");
                    }
                    Err(LineError::BareLf) => bare_lf = true,
                    Err(LineError::TooLong) => too_long = true,
                }
            }
        }
        if !too_long && !bare_lf {
            seen.extend(buffer.take_rest());
            prop_assert_eq!(seen, pushed);
        }
    }
}

// ---------------------------------------------------------------------
// DataReader and ChunkChecker
// ---------------------------------------------------------------------

/// Where DATA must end: just after the first CRLF "." CRLF, or after "."
/// CRLF at the very start. Nothing else ends it (SMTP smuggling).
fn data_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5)
}

/// Feeds `input` to a fresh reader in pieces; returns how much of `input`
/// belonged to the message, the output and the reader.
fn read_data(
    input: &[u8],
    cuts: &[usize],
    max_size: u64,
    max_line: usize,
) -> (Option<usize>, Vec<u8>, DataReader) {
    let mut reader = DataReader::new(max_size, max_line);
    let mut out = Vec::new();
    let mut start = 0;
    for piece in pieces(input, cuts) {
        if let Some(n) = reader.feed(piece, &mut out) {
            return (Some(start + n), out, reader);
        }
        start += piece.len();
    }
    (None, out, reader)
}

/// Dot-stuffs `body` the way a client does, without touching anything else
/// (bare CR and LF stay), and terminates it.
fn raw_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    for (i, &b) in body.iter().enumerate() {
        if b == b'.' && (i == 0 || body[..i].ends_with(b"\r\n")) {
            out.push(b'.');
        }
        out.push(b);
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn check_chunks(chunks: &[&[u8]], max_size: u64, max_line: usize) -> ChunkChecker {
    let mut checker = ChunkChecker::new(max_size, max_line);
    for chunk in chunks {
        checker.feed(chunk);
    }
    checker
}

proptest! {
    #![proptest_config(config())]

    /// The data ends exactly at the first CRLF "." CRLF, whatever came
    /// before it (bare CRs and LFs, NULs, over-long lines, too much data)
    /// and however the input was split; after that the reader takes
    /// nothing more. Its output never exceeds the size limit.
    #[test]
    fn data_ends_only_at_crlf_dot_crlf(
        input in prop_oneof![3 => wire_bytes(40), 1 => prop::collection::vec(any::<u8>(), 0..300)],
        raw_cuts in prop::collection::vec(any::<usize>(), 0..10),
        max_size in prop_oneof![0u64..64, Just(u64::MAX)],
        max_line in prop_oneof![0usize..40, Just(usize::MAX)],
    ) {
        let (consumed, out, mut reader) =
            read_data(&input, &cuts(input.len(), &raw_cuts), max_size, max_line);
        prop_assert_eq!(consumed, data_end(&input));
        prop_assert_eq!(reader.is_done(), consumed.is_some());
        prop_assert!(out.len() as u64 <= max_size);
        if reader.error().is_none() {
            prop_assert_eq!(out.len() as u64, reader.size());
        }
        if consumed.is_some() {
            let mut more = Vec::new();
            prop_assert_eq!(reader.feed(b"MAIL FROM:<>\r\n", &mut more), Some(0));
            prop_assert!(more.is_empty());
        }
    }

    /// How the input was split never changes the verdict, the end, or
    /// (for an accepted message) the output.
    #[test]
    fn data_reader_ignores_how_input_is_split(
        body in wire_bytes(40),
        raw_cuts in prop::collection::vec(any::<usize>(), 1..10),
        max_size in prop_oneof![0u64..64, Just(u64::MAX)],
        max_line in 2usize..40,
    ) {
        let mut input = body;
        input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        let whole = read_data(&input, &[], max_size, max_line);
        let split = read_data(&input, &cuts(input.len(), &raw_cuts), max_size, max_line);
        prop_assert_eq!(whole.0, split.0);
        prop_assert_eq!(whole.2.error(), split.2.error());
        if whole.2.error().is_none() {
            prop_assert_eq!(whole.1, split.1);
        }
    }

    /// BDAT: how the message was cut into chunks never changes the
    /// verdict; the size counts every octet; too_big is exact.
    #[test]
    fn chunk_checker_ignores_how_chunks_are_cut(
        body in prop_oneof![wire_bytes(40), clean_body(), prop::collection::vec(any::<u8>(), 0..300)],
        raw_cuts in prop::collection::vec(any::<usize>(), 0..10),
        size_delta in prop::option::weighted(0.8, -4i64..4),
        max_line in prop_oneof![0usize..40, Just(usize::MAX)],
    ) {
        // Around the body's length, where the size limit bites.
        let max_size = size_delta.map_or(u64::MAX, |d| (body.len() as i64 + d).max(0) as u64);
        let whole = check_chunks(&[&body], max_size, max_line);
        let split = check_chunks(&pieces(&body, &cuts(body.len(), &raw_cuts)), max_size, max_line);
        prop_assert_eq!(whole.finish(), split.finish());
        prop_assert_eq!(whole.too_big(), split.too_big());
        prop_assert_eq!(split.size(), body.len() as u64);
        prop_assert_eq!(split.too_big(), body.len() as u64 > max_size);
        if split.too_big() {
            prop_assert!(split.finish().is_some());
        }
    }

    /// A message cannot get through BDAT that DATA would refuse, nor the
    /// other way round: the same body, sent as one BDAT transfer or
    /// dot-stuffed through DATA, gets the same verdict, and through DATA it
    /// comes back unchanged.
    #[test]
    fn bdat_and_data_agree(
        body in prop_oneof![wire_bytes(40), clean_body()],
        max_line in prop_oneof![0usize..40, 40usize..200],
    ) {
        let checker = check_chunks(&[&body], u64::MAX, max_line);
        let data = raw_stuff(&body);
        let (consumed, out, reader) = read_data(&data, &[], u64::MAX, max_line);
        prop_assert_eq!(consumed, Some(data.len()), "premature end in {:?}", data);
        prop_assert_eq!(checker.finish(), reader.error(), "{:?}", body);
        if reader.error().is_none() {
            let mut expected = body.clone();
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(out, expected);
        }
    }

    /// With a size limit, too: refused by one iff refused by the other
    /// (the reply may differ when the line and size limits are crossed at
    /// the same octet).
    #[test]
    fn bdat_and_data_agree_on_size(
        body in prop_oneof![wire_bytes(30), clean_body()],
        max_line in prop_oneof![2usize..40, Just(usize::MAX)],
        slack in 0u64..4,
        over in any::<bool>(),
    ) {
        let mut body = body;
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        let len = body.len() as u64;
        let over = over && len > slack;
        let max_size = if over { len.saturating_sub(slack + 1) } else { len + slack };
        let checker = check_chunks(&[&body], max_size, max_line);
        let (consumed, _, reader) = read_data(&raw_stuff(&body), &[], max_size, max_line);
        prop_assert!(consumed.is_some());
        prop_assert_eq!(checker.finish().is_some(), reader.error().is_some(),
            "BDAT {:?} DATA {:?}", checker.finish(), reader.error());
        if over {
            prop_assert!(reader.error().is_some());
        }
    }
}

// ---------------------------------------------------------------------
// SASL
// ---------------------------------------------------------------------

/// PLAIN and LOGIN fields a client may send: UTF-8 without NUL, CR, LF.
fn sasl_field(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        any::<char>().prop_filter("NUL, CR, LF", |c| !matches!(c, '\0' | '\r' | '\n')),
        min..20,
    )
    .prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text: no panic; a decoding that succeeds is the only one
    /// (canonical base64), and decoded credentials hold no CR, LF or stray
    /// NUL, so they cannot inject anything into a log line or a lookup.
    #[test]
    fn sasl_takes_any_text(text in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9+/=*\\- \r\n]{0,40}",
        prop::collection::vec(any::<u8>(), 0..60).prop_map(|b| STANDARD.encode(b)),
        // Not canonical: no padding, or the URL-safe alphabet.
        prop::collection::vec(any::<u8>(), 0..60).prop_map(|b| STANDARD_NO_PAD.encode(b)),
        prop::collection::vec(any::<u8>(), 0..60).prop_map(|b| URL_SAFE.encode(b)),
        // Mostly valid UTF-8 with separators and line ends in it.
        prop::collection::vec(
            prop::sample::select(vec![b'a', b'a', b'a', 0, 0, b'\r', b'\n', 0xc3, 0xa9]),
            0..30,
        )
        .prop_map(|b| STANDARD.encode(b)),
    ]) {
        if let Ok(bytes) = decode_base64(&text) {
            if text != "=" {
                prop_assert_eq!(STANDARD.encode(&bytes), text.clone());
            }
        }
        if let Ok(field) = decode_login_field(&text) {
            prop_assert!(!field.contains(['\0', '\r', '\n']));
        }
        if let Ok(creds) = decode_plain(&text) {
            for field in [&creds.authzid, &creds.username, &creds.password] {
                prop_assert!(!field.contains(['\0', '\r', '\n']));
            }
            prop_assert!(!creds.username.is_empty() && !creds.password.is_empty());
            // The password never shows in Debug output.
            let shown = format!("{creds:?}");
            prop_assert!(shown.contains("<redacted>"));
        }
    }

    /// Base64 of any bytes decodes to those bytes; PLAIN and LOGIN give
    /// back what the client encoded, or refuse it for a stated reason.
    #[test]
    fn sasl_round_trips(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        authzid in sasl_field(0),
        username in sasl_field(1),
        password in sasl_field(1),
    ) {
        prop_assert_eq!(decode_base64(&STANDARD.encode(&bytes)), Ok(bytes.clone()));

        let plain = decode_plain(&STANDARD.encode(format!("{authzid}\0{username}\0{password}")))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&plain.authzid, &authzid);
        prop_assert_eq!(&plain.username, &username);
        prop_assert_eq!(&plain.password, &password);
        prop_assert_eq!(decode_login_field(&STANDARD.encode(&password)), Ok(password.clone()));

        let encoded = STANDARD.encode(&bytes);
        let login = decode_login_field(&encoded);
        match std::str::from_utf8(&bytes) {
            _ if bytes.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')) => {
                prop_assert_eq!(login, Err(SaslError::ControlChar))
            }
            Ok(text) => prop_assert_eq!(login, Ok(text.to_string())),
            Err(_) => prop_assert_eq!(login, Err(SaslError::BadUtf8)),
        }
    }
}

// ---------------------------------------------------------------------
// Dot-stuffing (the outbound client)
// ---------------------------------------------------------------------

/// What the receiving side must get for `body`: every line end (CRLF, lone
/// CR, lone LF) is CRLF, and a last line without one gets one.
fn normalized(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Stuffs `body` in the pieces given by `cuts`.
fn stuff_in_pieces(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut stuffer = Stuffer::new();
    let mut out = Vec::new();
    for piece in pieces(body, cuts) {
        stuffer.push(piece, &mut out);
    }
    stuffer.finish(&mut out);
    out
}

/// Lines of arbitrary octets (no CR, LF or NUL), many starting with dots.
fn text_lines() -> impl Strategy<Value = (Vec<Vec<u8>>, bool)> {
    let line = prop_oneof![
        1 => Just(b".".to_vec()),
        1 => Just(b"..".to_vec()),
        1 => Just(Vec::new()),
        2 => (1usize..4, prop::collection::vec(
                any::<u8>().prop_filter("no CR, LF, NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
                0..60,
            ))
            .prop_map(|(dots, rest)| [vec![b'.'; dots], rest].concat()),
        4 => prop::collection::vec(
                any::<u8>().prop_filter("no CR, LF, NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
                0..80,
            ),
    ];
    (prop::collection::vec(line, 0..12), any::<bool>())
}

proptest! {
    #![proptest_config(config())]

    /// A body of CRLF lines, dots anywhere, stuffed in any pieces and read
    /// back in any pieces by the strict reader, is the same bytes (with a
    /// CRLF added to a last line that had none).
    #[test]
    fn dot_stuffing_round_trips(
        (lines, final_crlf) in text_lines(),
        stuff_cuts in prop::collection::vec(any::<usize>(), 0..6),
        read_cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut body = lines.join(&b"\r\n"[..]);
        if final_crlf && !lines.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        let stuffed = stuff_in_pieces(&body, &cuts(body.len(), &stuff_cuts));
        let (consumed, out, reader) =
            read_data(&stuffed, &cuts(stuffed.len(), &read_cuts), u64::MAX, usize::MAX);
        prop_assert_eq!(consumed, Some(stuffed.len()));
        prop_assert_eq!(reader.error(), None);
        let mut expected = body.clone();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(out, expected);
    }

    /// Any bytes at all (bare CRs and LFs, NULs, dots): the stuffed form
    /// has no bare CR or LF, ends with the one end-of-data line and holds
    /// no earlier one, does not depend on how the body was cut, and the
    /// strict reader reads it to its very end as the normalised body. So
    /// no body can smuggle a second message past a receiving server.
    #[test]
    fn stuffed_form_is_clean(
        body in prop_oneof![3 => wire_bytes(60), 1 => prop::collection::vec(any::<u8>(), 0..300)],
        raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stuffed = Vec::new();
        dot_stuff(&body, &mut stuffed);
        prop_assert_eq!(&stuff_in_pieces(&body, &cuts(body.len(), &raw_cuts)), &stuffed);

        for (i, &b) in stuffed.iter().enumerate() {
            if b == b'\r' {
                prop_assert_eq!(stuffed.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
            }
            if b == b'\n' {
                prop_assert!(i > 0 && stuffed[i - 1] == b'\r', "bare LF at {}", i);
            }
        }
        prop_assert!(stuffed.ends_with(b".\r\n"));
        prop_assert_eq!(data_end(&stuffed), Some(stuffed.len()), "early end in {:?}", stuffed);

        let (consumed, out, reader) = read_data(&stuffed, &[], u64::MAX, usize::MAX);
        prop_assert_eq!(consumed, Some(stuffed.len()));
        if body.contains(&0) {
            prop_assert_eq!(reader.error(), Some(DataError::Nul));
        } else {
            prop_assert_eq!(reader.error(), None);
            prop_assert_eq!(out, normalized(&body));
        }
    }
}
