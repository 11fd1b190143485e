use super::*;

mod security;

/// `C: line` must parse.
fn ok(line: &str) -> Command {
    match parse_command(line.as_bytes()) {
        Ok(c) => c,
        Err(r) => panic!("C: {line}\nS: {r}"),
    }
}

/// `C: line` must be refused; returns the reply as the server sends it.
fn refused(line: &[u8]) -> String {
    match parse_command(line) {
        Ok(c) => panic!("C: {}\nparsed as {c:?}", String::from_utf8_lossy(line)),
        Err(r) => r.to_string(),
    }
}

fn code(line: &[u8]) -> String {
    let reply = refused(line);
    reply.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn mail_from(line: &str) -> ReversePath {
    match ok(line) {
        Command::Mail { from, .. } => from,
        other => panic!("{other:?}"),
    }
}

fn rcpt_to(line: &str) -> ForwardPath {
    match ok(line) {
        Command::Rcpt { to, .. } => to,
        other => panic!("{other:?}"),
    }
}

fn mail_params(line: &str) -> MailParams {
    match ok(line) {
        Command::Mail { params, .. } => params,
        other => panic!("{other:?}"),
    }
}

fn rcpt_params(line: &str) -> RcptParams {
    match ok(line) {
        Command::Rcpt { params, .. } => params,
        other => panic!("{other:?}"),
    }
}

#[test]
fn greetings() {
    assert_eq!(
        ok("EHLO client.example.org"),
        Command::Ehlo {
            host: "client.example.org".into()
        }
    );
    assert_eq!(
        ok("ehlo [192.0.2.1]"),
        Command::Ehlo {
            host: "[192.0.2.1]".into()
        }
    );
    assert_eq!(
        ok("HELO client"),
        Command::Helo {
            host: "client".into()
        }
    );
    assert_eq!(code(b"EHLO"), "501 5.5.4");
    assert_eq!(code(b"EHLO "), "501 5.5.4");
    assert_eq!(code(b"HELO"), "501 5.5.4");
}

#[test]
fn simple_commands() {
    assert_eq!(ok("DATA"), Command::Data);
    assert_eq!(ok("data"), Command::Data);
    assert_eq!(ok("RSET"), Command::Rset);
    assert_eq!(ok("QUIT"), Command::Quit);
    assert_eq!(ok("StartTLS"), Command::StartTls);
    assert_eq!(ok("NOOP"), Command::Noop);
    assert_eq!(ok("NOOP anything at all"), Command::Noop);
    assert_eq!(ok("HELP"), Command::Help { arg: String::new() });
    assert_eq!(ok("HELP MAIL"), Command::Help { arg: "MAIL".into() });
    assert_eq!(
        ok("VRFY postmaster"),
        Command::Vrfy {
            arg: "postmaster".into()
        }
    );
    assert_eq!(
        ok("EXPN staff"),
        Command::Expn {
            arg: "staff".into()
        }
    );
    assert_eq!(code(b"VRFY"), "501 5.5.4");
    assert_eq!(code(b"EXPN"), "501 5.5.4");
}

#[test]
fn commands_without_arguments_refuse_them() {
    for line in ["DATA now", "RSET x", "QUIT bye", "STARTTLS x"] {
        assert_eq!(code(line.as_bytes()), "501 5.5.4", "{line}");
    }
    // Trailing spaces are not arguments.
    assert_eq!(ok("DATA "), Command::Data);
}

#[test]
fn unknown_commands() {
    for line in [
        &b"FOO"[..],
        b"",
        b" ",
        b"DATAX",
        b"MAILFROM:<a@b.c>",
        b"LHLO x",
        b"ETRN x",
        b"BURL x",
    ] {
        assert_eq!(
            refused(line),
            "500 5.5.2 Command not recognized",
            "{line:?}"
        );
    }
}

#[test]
fn mail_from_paths() {
    // C: MAIL FROM:<Joe@Example.COM>
    assert_eq!(
        mail_from("MAIL FROM:<Joe@Example.COM>"),
        ReversePath::Mailbox(addr("Joe@example.com"))
    );
    assert_eq!(
        mail_from("mail from:<a@b.example>"),
        ReversePath::Mailbox(addr("a@b.example"))
    );
    assert_eq!(
        mail_from("MAIL FROM: <a@b.example>"),
        ReversePath::Mailbox(addr("a@b.example"))
    );
    assert_eq!(mail_from("MAIL FROM:<>"), ReversePath::Null);
    assert_eq!(mail_params("MAIL FROM:<>"), MailParams::default());
}

#[test]
fn mail_from_null_lookalikes_are_refused() {
    // smtp_proto reads all of these as the null path.
    for line in [
        "MAIL FROM:<postmaster>",
        "MAIL FROM:<Postmaster>",
        "MAIL FROM:<\"\">",
        "MAIL FROM:< >",
    ] {
        assert_eq!(
            refused(line.as_bytes()),
            "553 5.1.7 Bad sender address syntax",
            "{line}"
        );
    }
}

#[test]
fn mail_syntax_errors() {
    for line in [
        "MAIL",
        "MAIL FROM",
        "MAIL FROM:a@b.c",
        "MAIL FROM <a@b.c>",
        "MAIL TO:<a@b.c>",
        "MAIL FROM:<a@b.c",
    ] {
        assert_eq!(code(line.as_bytes()), "501 5.5.4", "{line}");
    }
    assert_eq!(code(b"MAIL FROM:<a@b.c>SIZE=10"), "501 5.5.4");
    assert_eq!(code(b"MAIL FROM:<a@b.c>garbage"), "501 5.5.4");
}

#[test]
fn bad_sender_addresses() {
    for line in [
        "MAIL FROM:<a@>",
        "MAIL FROM:<@b.c>",
        "MAIL FROM:<nodomain>",
        "MAIL FROM:<a@b..c>",
        "MAIL FROM:<a@b.c.>",
        "MAIL FROM:<a b@c.d>",
        "MAIL FROM:<a@-b.c>",
    ] {
        assert_eq!(
            refused(line.as_bytes()),
            "553 5.1.7 Bad sender address syntax",
            "{line}"
        );
    }
}

#[test]
fn rcpt_to_paths() {
    assert_eq!(
        rcpt_to("RCPT TO:<bob@Local.Test>"),
        ForwardPath::Mailbox(addr("bob@local.test"))
    );
    assert_eq!(
        rcpt_to("rcpt to:<bob@local.test>"),
        ForwardPath::Mailbox(addr("bob@local.test"))
    );
    // RFC 5321 4.1.1.3: the domain-less postmaster, in any case.
    assert_eq!(rcpt_to("RCPT TO:<postmaster>"), ForwardPath::Postmaster);
    assert_eq!(rcpt_to("RCPT TO:<PostMaster>"), ForwardPath::Postmaster);
    assert_eq!(
        rcpt_to("RCPT TO:<postmaster@local.test>"),
        ForwardPath::Mailbox(addr("postmaster@local.test"))
    );
    assert_eq!(rcpt_params("RCPT TO:<postmaster>"), RcptParams::default());
}

#[test]
fn bad_recipients() {
    for line in [
        "RCPT TO:<>",
        "RCPT TO:<\"\">",
        "RCPT TO:<\"postmaster\">",
        "RCPT TO:<a@>",
        "RCPT TO:<a b@c.d>",
    ] {
        assert_eq!(
            refused(line.as_bytes()),
            "553 5.1.3 Bad recipient address syntax",
            "{line}"
        );
    }
    for line in ["RCPT", "RCPT TO", "RCPT TO:b@c.d", "RCPT FROM:<b@c.d>"] {
        assert_eq!(code(line.as_bytes()), "501 5.5.4", "{line}");
    }
}

#[test]
fn utf8_addresses() {
    assert_eq!(
        mail_from("MAIL FROM:<jörg@bücher.example> SMTPUTF8"),
        ReversePath::Mailbox(addr("jörg@bücher.example"))
    );
    assert!(mail_params("MAIL FROM:<jörg@bücher.example> SMTPUTF8").smtputf8);
    assert_eq!(
        refused(b"MAIL FROM:<j\xf6rg@b.example>"),
        "501 5.5.2 Invalid UTF-8 in command"
    );
    assert_eq!(refused(b"EHLO h\xff"), "501 5.5.2 Invalid UTF-8 in command");
}

#[test]
fn mail_parameters() {
    let p = mail_params(
        "MAIL FROM:<a@b.c> SIZE=12345 BODY=8BITMIME SMTPUTF8 AUTH=<> ENVID=QQ+2BA1 RET=HDRS",
    );
    assert_eq!(
        p,
        MailParams {
            size: Some(12345),
            body: Body::EightBitMime,
            smtputf8: true,
            auth: Some("<>".into()),
            envid: Some("QQ+A1".into()),
            ret: Some(Ret::Headers),
        }
    );
    assert_eq!(
        mail_params("MAIL FROM:<> body=binarymime ret=full").body,
        Body::BinaryMime
    );
    assert_eq!(mail_params("MAIL FROM:<> RET=FULL").ret, Some(Ret::Full));
    assert_eq!(mail_params("MAIL FROM:<> BODY=7BIT").body, Body::SevenBit);
    assert_eq!(
        mail_params("MAIL FROM:<> AUTH=bob+40local.test").auth,
        Some("bob@local.test".into())
    );
    assert_eq!(mail_params("MAIL FROM:<>  SIZE=1 ").size, Some(1));
}

#[test]
fn size_is_exact_and_saturates() {
    assert_eq!(mail_params("MAIL FROM:<> SIZE=0").size, Some(0));
    assert_eq!(
        mail_params("MAIL FROM:<> SIZE=18446744073709551614").size,
        Some(u64::MAX - 1)
    );
    // smtp_proto wraps this one around to a small number.
    assert_eq!(
        mail_params("MAIL FROM:<> SIZE=99999999999999999999999999").size,
        Some(u64::MAX)
    );
    // ... and refuses these with 501 when it is left to read them.
    for digits in [
        "18446744073709551615",
        "18446744073709551616",
        "100000000000000000000",
    ] {
        assert_eq!(
            mail_params(&format!("MAIL FROM:<a@b.c> SIZE={digits} BODY=8BITMIME")).size,
            Some(u64::MAX),
            "{digits}"
        );
    }
    for line in [
        "MAIL FROM:<> SIZE=",
        "MAIL FROM:<> SIZE",
        "MAIL FROM:<> SIZE=abc",
        "MAIL FROM:<> SIZE=-1",
        "MAIL FROM:<> SIZE= 100",
    ] {
        assert_eq!(code(line.as_bytes()), "501 5.5.4", "{line}");
    }
}

#[test]
fn bad_mail_parameters() {
    assert_eq!(code(b"MAIL FROM:<> BODY=9BIT"), "501 5.5.4");
    assert_eq!(code(b"MAIL FROM:<> RET=SOME"), "501 5.5.4");
    assert_eq!(code(b"MAIL FROM:<> SIZE=1 SIZE=2"), "501 5.5.4");
    assert_eq!(code(b"MAIL FROM:<> BODY=8BITMIME body=7BIT"), "501 5.5.4");
    assert_eq!(code(b"MAIL FROM:<> ,"), "501 5.5.4");
    assert_eq!(code(b"MAIL FROM:<> =x"), "501 5.5.4");
}

#[test]
fn unsupported_parameters() {
    assert_eq!(
        refused(b"MAIL FROM:<a@b.c> FOO=bar"),
        "555 5.5.4 Unsupported parameter FOO"
    );
    for line in [
        "MAIL FROM:<a@b.c> REQUIRETLS",
        "MAIL FROM:<a@b.c> MT-PRIORITY=3",
        "MAIL FROM:<a@b.c> HOLDFOR=10",
        "MAIL FROM:<a@b.c> CONPERM",
        "MAIL FROM:<a@b.c> TRANSID=<x@y>",
        "RCPT TO:<a@b.c> CONNEG",
        "RCPT TO:<a@b.c> SIZE=100",
        "RCPT TO:<a@b.c> X",
    ] {
        assert_eq!(code(line.as_bytes()), "555 5.5.4", "{line}");
    }
}

#[test]
fn rcpt_parameters() {
    let p = rcpt_params("RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40b.c");
    assert_eq!(p.notify, RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE);
    assert_eq!(p.orcpt.as_deref(), Some("bob@b.c"));
    assert_eq!(
        rcpt_params("RCPT TO:<a@b.c> NOTIFY=NEVER").notify,
        RCPT_NOTIFY_NEVER
    );
    assert_eq!(
        rcpt_params("RCPT TO:<a@b.c> NOTIFY=DELAY").notify,
        RCPT_NOTIFY_DELAY
    );
    assert_eq!(code(b"RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS"), "501 5.5.4");
    assert_eq!(code(b"RCPT TO:<a@b.c> NOTIFY=SOMETIMES"), "501 5.5.4");
    assert_eq!(code(b"RCPT TO:<a@b.c> ORCPT=x400;abc"), "501 5.5.4");
    assert_eq!(
        code(b"RCPT TO:<a@b.c> NOTIFY=DELAY NOTIFY=DELAY"),
        "501 5.5.4"
    );
}

#[test]
fn bdat_command() {
    assert_eq!(
        ok("BDAT 0 LAST"),
        Command::Bdat {
            size: 0,
            last: true
        }
    );
    assert_eq!(
        ok("BDAT 1000"),
        Command::Bdat {
            size: 1000,
            last: false
        }
    );
    assert_eq!(
        ok("bdat 86 last"),
        Command::Bdat {
            size: 86,
            last: true
        }
    );
    assert_eq!(
        ok("BDAT 10000000000"),
        Command::Bdat {
            size: 10_000_000_000,
            last: false
        }
    );
    for line in [
        "BDAT",
        "BDAT abc",
        "BDAT -1",
        "BDAT +5",
        "BDAT 10 FIRST",
        "BDAT 10 LASTX",
        "BDAT 10 LAST extra",
        // smtp_proto would read this as 999: the wrong chunk length would
        // make the session run message bytes as commands.
        "BDAT 99999999999999999999999",
    ] {
        assert_eq!(code(line.as_bytes()), "501 5.5.4", "{line}");
    }
}

#[test]
fn auth_command() {
    assert_eq!(
        ok("AUTH PLAIN"),
        Command::Auth {
            mechanism: Mechanism::Plain,
            initial_response: None
        }
    );
    assert_eq!(
        ok("auth plain dGVzdAB0ZXN0AHRlc3Q="),
        Command::Auth {
            mechanism: Mechanism::Plain,
            initial_response: Some("dGVzdAB0ZXN0AHRlc3Q=".into())
        }
    );
    assert_eq!(
        ok("AUTH PLAIN ="),
        Command::Auth {
            mechanism: Mechanism::Plain,
            initial_response: Some("=".into())
        }
    );
    assert_eq!(
        ok("AUTH LOGIN"),
        Command::Auth {
            mechanism: Mechanism::Login,
            initial_response: None
        }
    );
    assert_eq!(
        ok("AUTH CRAM-MD5"),
        Command::Auth {
            mechanism: Mechanism::Other("CRAM-MD5".into()),
            initial_response: None
        }
    );
    assert_eq!(
        ok("AUTH x-made_up"),
        Command::Auth {
            mechanism: Mechanism::Other("X-MADE_UP".into()),
            initial_response: None
        }
    );
    for line in [
        "AUTH",
        "AUTH PLAIN a b",
        "AUTH PL@IN",
        "AUTH ABCDEFGHIJKLMNOPQRSTU",
    ] {
        assert_eq!(code(line.as_bytes()), "501 5.5.4", "{line}");
    }
}

#[test]
fn verb_names() {
    assert_eq!(ok("MAIL FROM:<>").verb(), "MAIL");
    assert_eq!(ok("BDAT 1").verb(), "BDAT");
    assert_eq!(ok("STARTTLS").verb(), "STARTTLS");
}
