//! The forms attackers use: relay tricks in addresses, and control
//! characters smuggled into command lines.

use super::*;

/// How each relay trick is parsed: faithfully, so the relay policy (plain
/// local part, local domain) can see it for what it is.
#[test]
fn relay_tricks() {
    // Percent hack: the local part keeps the '%'.
    let a = match rcpt_to("RCPT TO:<user%evil.com@local.test>") {
        ForwardPath::Mailbox(a) => a,
        p => panic!("{p:?}"),
    };
    assert_eq!((a.local(), a.domain()), ("user%evil.com", "local.test"));
    assert!(!a.is_plain());

    // Bang path: the local part keeps the '!'.
    let a = match rcpt_to("RCPT TO:<evil.com!user@local.test>") {
        ForwardPath::Mailbox(a) => a,
        p => panic!("{p:?}"),
    };
    assert_eq!((a.local(), a.domain()), ("evil.com!user", "local.test"));
    assert!(!a.is_plain());

    // Source route: dropped (RFC 5321 C), leaving the real, remote target.
    assert_eq!(
        rcpt_to("RCPT TO:<@local.test:user@evil.com>"),
        ForwardPath::Mailbox(addr("user@evil.com"))
    );
    assert_eq!(
        rcpt_to("RCPT TO:<@local.test,@other.test:user@evil.com>"),
        ForwardPath::Mailbox(addr("user@evil.com"))
    );

    // Quoted '@': unquoted, split at the last '@', so the local part is
    // "user@evil.com" and not plain.
    let a = match rcpt_to("RCPT TO:<\"user@evil.com\"@local.test>") {
        ForwardPath::Mailbox(a) => a,
        p => panic!("{p:?}"),
    };
    assert_eq!((a.local(), a.domain()), ("user@evil.com", "local.test"));
    assert!(!a.is_plain());

    // Two unquoted '@': refused outright.
    assert_eq!(
        refused(b"RCPT TO:<user@evil.com@local.test>"),
        "553 5.1.3 Bad recipient address syntax"
    );
    assert_eq!(
        refused(b"MAIL FROM:<user@evil.com@local.test>"),
        "553 5.1.7 Bad sender address syntax"
    );

    // Address literal: kept as the domain.
    let a = match rcpt_to("RCPT TO:<user@[127.0.0.1]>") {
        ForwardPath::Mailbox(a) => a,
        p => panic!("{p:?}"),
    };
    assert_eq!((a.local(), a.domain()), ("user", "[127.0.0.1]"));

    // Plainly remote.
    assert_eq!(
        rcpt_to("RCPT TO:<user@evil.com>"),
        ForwardPath::Mailbox(addr("user@evil.com"))
    );
}

#[test]
fn address_literals() {
    assert_eq!(
        mail_from("MAIL FROM:<a@[192.0.2.1]>"),
        ReversePath::Mailbox(addr("a@[192.0.2.1]"))
    );
    assert_eq!(
        rcpt_to("RCPT TO:<postmaster@[IPv6:2001:db8::1]>"),
        ForwardPath::Mailbox(addr("postmaster@[ipv6:2001:db8::1]"))
    );
    assert_eq!(
        rcpt_to("RCPT TO:<\"a b\"@[192.0.2.1]> NOTIFY=NEVER"),
        ForwardPath::Mailbox(addr("a b@[192.0.2.1]"))
    );
    // A '>' inside the quoted local part does not end the path.
    assert_eq!(
        rcpt_to("RCPT TO:<\"x@[1.2.3.4]>\"@local.test>"),
        ForwardPath::Mailbox(addr("x@[1.2.3.4]>@local.test"))
    );
    for line in [
        "RCPT TO:<a@[999.0.0.1]>",
        "RCPT TO:<a@[1.2.3]>",
        "RCPT TO:<a@[IPv6:zz::1]>",
        "RCPT TO:<a@[tag:content]>",
        "RCPT TO:<a@[]>",
        "RCPT TO:<a@[1.2.3.4>",
        "RCPT TO:<a@[1.2.3.4]x>",
        "RCPT TO:<@[1.2.3.4]:a@b.c>",
    ] {
        assert_eq!(
            refused(line.as_bytes()),
            "553 5.1.3 Bad recipient address syntax",
            "{line}"
        );
    }
}

/// Control characters are refused wherever they hide, with one reply.
#[test]
fn control_characters_anywhere() {
    let refusal = "501 5.5.2 Control characters are not allowed";
    for line in [
        &b"NOOP\rRSET"[..],
        b"MAIL FROM:<a@b.c>\r",
        b"MAIL FROM:<a@b.c>\n",
        b"MAIL FROM:<a\r@b.c>",
        b"MAIL FROM:<a\0@b.c>",
        b"MAIL FROM:<\"a\r\n\"@b.c>",
        b"RCPT TO:<a@b.c\x7f>",
        b"MAIL FROM:<a@b.c> SIZE=1\r0",
        b"MAIL FROM:<a@b.c> SIZE=10\0",
        b"MAIL FROM:<a@b.c> AUTH=x\ty",
        b"RCPT TO:<a@b.c> ORCPT=rfc822;a@b.c\x1b",
        b"AUTH PLAIN dGVz\rdA==",
        b"AUTH PLAIN dGVzdA==\x00",
        b"EHLO host\x0bname",
        b"EHLO\thost",
        b"BDAT 10\rLAST",
        b"DATA\0",
        b"\0",
        b"HELO x\xc2\x85y",
    ] {
        assert_eq!(refused(line), refusal, "{line:?}");
    }
}

/// xtext can spell control characters as +0D, +0A, +00 (RFC 3461 4); they
/// are refused after decoding too.
#[test]
fn encoded_control_characters() {
    for line in [
        "MAIL FROM:<a@b.c> ENVID=a+0D+0Ab",
        "MAIL FROM:<a@b.c> AUTH=a+00b@c.d",
        "MAIL FROM:<a@b.c> AUTH=a+7F",
        "RCPT TO:<a@b.c> ORCPT=rfc822;a+0Ab@c.d",
    ] {
        assert_eq!(code(line.as_bytes()), "501 5.5.2", "{line}");
    }
}
