use super::*;

const SMTP_LINE: usize = 1000;
const BIG: u64 = 10 * 1024 * 1024;

/// What a reader made of some input.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    consumed: Option<usize>,
    out: Vec<u8>,
    error: Option<DataError>,
}

fn whole(input: &[u8], max_size: u64, max_line: usize) -> Outcome {
    let mut r = DataReader::new(max_size, max_line);
    let mut out = Vec::new();
    let consumed = r.feed(input, &mut out);
    Outcome {
        consumed,
        out,
        error: r.error(),
    }
}

/// Feeds `input` in the pieces given by `cuts`, stopping as soon as the end
/// of data is seen, and reports `consumed` relative to the whole input.
fn pieces(input: &[u8], cuts: &[usize], max_size: u64, max_line: usize) -> Outcome {
    let mut r = DataReader::new(max_size, max_line);
    let mut out = Vec::new();
    let mut start = 0;
    let mut consumed = None;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        if let Some(n) = r.feed(&input[start..end], &mut out) {
            consumed = Some(start + n);
            break;
        }
        start = end;
    }
    Outcome {
        consumed,
        out,
        error: r.error(),
    }
}

/// The part of an outcome that must not depend on how the input was split:
/// once the message is refused, what `out` holds is unspecified (it only
/// stays bounded).
fn verdict(o: &Outcome) -> (Option<usize>, Option<DataError>, Option<&[u8]>) {
    (o.consumed, o.error, o.error.is_none().then_some(&o.out[..]))
}

/// Reads `input` whole, byte by byte and split in two at every position,
/// asserts that all agree, and returns the outcome of the whole read.
fn read(input: &[u8], max_size: u64, max_line: usize) -> Outcome {
    let expected = whole(input, max_size, max_line);
    let bytewise: Vec<usize> = (1..input.len()).collect();
    let got = pieces(input, &bytewise, max_size, max_line);
    assert_eq!(verdict(&got), verdict(&expected), "byte by byte");
    assert!(got.out.len() as u64 <= max_size);
    if input.len() <= 256 {
        for cut in 0..=input.len() {
            let got = pieces(input, &[cut], max_size, max_line);
            assert_eq!(verdict(&got), verdict(&expected), "cut at {cut}");
        }
    }
    expected
}

fn ok(out: &[u8], consumed: usize) -> Outcome {
    Outcome {
        consumed: Some(consumed),
        out: out.to_vec(),
        error: None,
    }
}

#[test]
fn empty_message() {
    assert_eq!(read(b".\r\n", BIG, SMTP_LINE), ok(b"", 3));
}

#[test]
fn simple_message_keeps_last_crlf() {
    let input = b"Subject: hi\r\n\r\nHello\r\n.\r\n";
    assert_eq!(
        read(input, BIG, SMTP_LINE),
        ok(b"Subject: hi\r\n\r\nHello\r\n", input.len())
    );
}

#[test]
fn pipelined_commands_after_terminator_are_not_consumed() {
    let input = b"Hello\r\n.\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n";
    let got = read(input, BIG, SMTP_LINE);
    assert_eq!(got, ok(b"Hello\r\n", 10));
    assert_eq!(&input[10..], b"MAIL FROM:<a@b.c>\r\nQUIT\r\n");
}

#[test]
fn needs_more_input() {
    for partial in [
        &b""[..],
        b"Hello",
        b"Hello\r",
        b"Hello\r\n",
        b"Hello\r\n.",
        b"Hello\r\n.\r",
        b".",
    ] {
        let got = read(partial, BIG, SMTP_LINE);
        assert_eq!(got.consumed, None, "{partial:?}");
        assert_eq!(got.error, None, "{partial:?}");
    }
}

#[test]
fn dot_unstuffing() {
    // Client sends        Message holds
    // "..\r\n"            ".\r\n"
    // ".hidden\r\n"       "hidden\r\n"
    // "...\r\n"           "..\r\n"
    // "a.b\r\n"           "a.b\r\n"    (only a leading dot is stuffing)
    // ". \r\n"            " \r\n"
    let input = b"..\r\n.hidden\r\n...\r\na.b\r\n. \r\n.\r\n";
    assert_eq!(
        read(input, BIG, SMTP_LINE),
        ok(b".\r\nhidden\r\n..\r\na.b\r\n \r\n", input.len())
    );
}

#[test]
fn crlf_split_across_feeds() {
    let mut r = DataReader::new(BIG, SMTP_LINE);
    let mut out = Vec::new();
    assert_eq!(r.feed(b"line one\r", &mut out), None);
    assert_eq!(r.feed(b"\nline two\r\n.", &mut out), None);
    assert_eq!(r.feed(b"\r", &mut out), None);
    assert_eq!(r.feed(b"\nQUIT\r\n", &mut out), Some(1));
    assert_eq!(out, b"line one\r\nline two\r\n");
    assert_eq!(r.error(), None);
    assert!(r.is_done());
    assert_eq!(r.feed(b"more", &mut out), Some(0));
}

/// The smuggling payload: a second transaction hidden behind a fake
/// terminator, then the real one, then the client's next command.
fn smuggle(fake: &[u8]) -> (Vec<u8>, usize) {
    let mut input = b"Subject: test\r\n\r\nhello".to_vec();
    input.extend_from_slice(fake);
    input.extend_from_slice(
        b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<x@victim.test>\r\nDATA\r\nforged\r\n",
    );
    input.extend_from_slice(b".\r\n");
    let end = input.len();
    input.extend_from_slice(b"QUIT\r\n");
    (input, end)
}

#[test]
fn smuggling_variants_do_not_end_the_data() {
    use DataError::*;
    let cases: &[(&[u8], DataError)] = &[
        (b"\n.\n", BareLf),
        (b"\r.\r", BareCr),
        (b"\n.\r\n", BareLf),
        (b"\r.\n", BareCr),
        (b"\r\n.\r", BareCr),
        (b"\r\n.\n", BareLf),
        (b"\r\n\0.\r\n", Nul),
        (b"\r\n.\0\r\n", Nul),
        (b"\r\n.\r\r\n", BareCr),
        (b"\r\r\n.\r\r\n", BareCr),
        (b"\n\n.\n\n", BareLf),
        (b"\r\r.\r\r", BareCr),
        (b"\n\r.\n\r", BareLf),
    ];
    for &(fake, error) in cases {
        let (input, end) = smuggle(fake);
        let got = read(&input, BIG, SMTP_LINE);
        // The data ends only at the real CRLF "." CRLF, so the forged
        // transaction was swallowed and the next command is QUIT.
        assert_eq!(got.consumed, Some(end), "fake terminator {fake:?}");
        assert_eq!(&input[end..], b"QUIT\r\n");
        assert_eq!(got.error, Some(error), "fake terminator {fake:?}");
        // Nothing after the first problem was stored.
        assert!(!got.out.windows(4).any(|w| w == b"MAIL"), "{fake:?}");
    }
}

#[test]
fn real_terminator_after_garbage_still_ends_the_data() {
    // A bare LF followed by a genuine CRLF "." CRLF: the data ends there,
    // refused.
    let input = b"a\n\r\n.\r\nQUIT\r\n";
    let got = read(input, BIG, SMTP_LINE);
    assert_eq!(got.consumed, Some(7));
    assert_eq!(got.error, Some(DataError::BareLf));
}

#[test]
fn bare_cr_just_before_terminator() {
    let input = b"abc\r\r\n.\r\n";
    let got = read(input, BIG, SMTP_LINE);
    assert_eq!(got.consumed, Some(input.len()));
    assert_eq!(got.error, Some(DataError::BareCr));
}

#[test]
fn nul_is_refused() {
    let got = read(b"a\0b\r\n.\r\n", BIG, SMTP_LINE);
    assert_eq!(got.error, Some(DataError::Nul));
    assert_eq!(got.consumed, Some(8));
}

#[test]
fn first_error_wins() {
    let got = read(b"\0\r\n\n\rxxxxxxxxxxxxxxxxxxxx\r\n.\r\n", 5, 10);
    assert_eq!(got.error, Some(DataError::Nul));
    let got = read(b"xxxxxxxxxxxxxxxxxxxx\0\r\n.\r\n", BIG, 10);
    assert_eq!(got.error, Some(DataError::LineTooLong));
    let got = read(b"xxxxxxxxxxxxxxxxxxxx\0\r\n.\r\n", 5, 1000);
    assert_eq!(got.error, Some(DataError::TooBig));
}

#[test]
fn stops_storing_after_error() {
    let got = read(b"good\r\n\rbad\r\nmore\r\n.\r\n", BIG, SMTP_LINE);
    assert_eq!(got.error, Some(DataError::BareCr));
    assert_eq!(got.out, b"good\r\n");
}

#[test]
fn line_limit_counts_crlf_but_not_stuffing_dot() {
    // max_line 10: eight octets plus CRLF fit, nine do not.
    assert_eq!(read(b"12345678\r\n.\r\n", BIG, 10), ok(b"12345678\r\n", 13));
    assert_eq!(
        read(b"..2345678\r\n.\r\n", BIG, 10),
        ok(b".2345678\r\n", 14)
    );
    let got = read(b"123456789\r\nnext\r\n.\r\n", BIG, 10);
    assert_eq!(got.error, Some(DataError::LineTooLong));
    assert_eq!(got.consumed, Some(20));
}

#[test]
fn size_limit_counts_crlf() {
    assert_eq!(
        read(b"12345678\r\n.\r\n", 10, SMTP_LINE),
        ok(b"12345678\r\n", 13)
    );
    assert_eq!(
        read(b"1234567\r\n\r\n.\r\n", 10, SMTP_LINE).error,
        Some(DataError::TooBig)
    );
    assert_eq!(
        read(b"123456789\r\n.\r\n", 10, SMTP_LINE).error,
        Some(DataError::TooBig)
    );
    assert_eq!(read(b"..\r\n.\r\n", 3, SMTP_LINE), ok(b".\r\n", 7));
}

#[test]
fn oversized_message_is_consumed_with_bounded_memory() {
    let line = [b'x'; 998];
    let mut r = DataReader::new(64 * 1024, SMTP_LINE);
    let mut out = Vec::new();
    for _ in 0..10_000 {
        assert_eq!(r.feed(&line, &mut out), None);
        assert_eq!(r.feed(b"\r\n", &mut out), None);
    }
    assert!(out.len() <= 64 * 1024);
    assert_eq!(r.error(), Some(DataError::TooBig));
    assert_eq!(r.feed(b".\r\nQUIT\r\n", &mut out), Some(3));
    assert!(out.len() <= 64 * 1024);
}

#[test]
fn over_long_line_is_consumed_with_bounded_memory() {
    let mut r = DataReader::new(BIG, SMTP_LINE);
    let mut out = Vec::new();
    let chunk = [b'y'; 4096];
    for _ in 0..1000 {
        assert_eq!(r.feed(&chunk, &mut out), None);
    }
    assert!(out.len() < SMTP_LINE);
    // A fake terminator inside the long line changes nothing.
    assert_eq!(r.feed(b"\n.\n", &mut out), None);
    assert_eq!(r.feed(b"\r\n.\r\nNOOP\r\n", &mut out), Some(5));
    assert_eq!(r.error(), Some(DataError::LineTooLong));
}

#[test]
fn error_replies() {
    assert_eq!(DataError::BareLf.reply().code, 550);
    assert_eq!(DataError::BareLf.reply().enhanced, "5.6.0");
    assert_eq!(DataError::BareCr.reply().enhanced, "5.6.0");
    assert_eq!(DataError::Nul.reply().code, 550);
    assert_eq!(
        DataError::LineTooLong.reply().to_string(),
        "500 5.5.2 Line too long"
    );
    assert_eq!(
        DataError::TooBig.reply().to_string(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
}

#[test]
fn find_special_matches_naive_search() {
    let mut s = vec![b'a'; 200];
    assert_eq!(find_special(&s), None);
    for pos in [0, 1, 31, 32, 33, 63, 64, 150, 199] {
        for b in [b'\r', b'\n', 0] {
            s[pos] = b;
            assert_eq!(find_special(&s), Some(pos));
            s[pos] = b'a';
        }
    }
}

/// An independent statement of the rules, written for clarity rather than
/// speed, to check the reader against on random inputs that end in a
/// terminator.
fn reference(input: &[u8], max_size: u64, max_line: usize) -> Outcome {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    let at = framed.windows(5).position(|w| w == b"\r\n.\r\n").unwrap();
    let consumed = at + 3;
    // The message is everything before the "." of the terminator.
    let region = &input[..consumed - 3];

    // (position where it is noticed, tie order, error)
    let mut events: Vec<(usize, u8, DataError)> = Vec::new();
    for (i, &b) in region.iter().enumerate() {
        match b {
            b'\r' if region.get(i + 1) != Some(&b'\n') => {
                events.push((i + 1, 0, DataError::BareCr))
            }
            b'\n' if i == 0 || region[i - 1] != b'\r' => events.push((i, 1, DataError::BareLf)),
            0 => events.push((i, 1, DataError::Nul)),
            _ => {}
        }
    }
    let mut size = 0u64;
    let mut out = Vec::new();
    let mut start = 0;
    while start < region.len() {
        let end = region[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap()
            + start;
        let mut line_len = 0;
        for (p, &b) in region.iter().enumerate().take(end).skip(start) {
            if (p == start && b == b'.') || b == b'\r' || b == b'\n' || b == 0 {
                continue;
            }
            line_len += 1;
            size += 1;
            if line_len + 2 > max_line {
                events.push((p, 1, DataError::LineTooLong));
            }
            if size > max_size {
                events.push((p, 2, DataError::TooBig));
            }
            out.push(b);
        }
        size += 2;
        if size > max_size {
            events.push((end + 1, 2, DataError::TooBig));
        }
        out.extend_from_slice(b"\r\n");
        start = end + 2;
    }
    events.sort_by_key(|&(p, o, _)| (p, o));
    let error = events.first().map(|&(_, _, e)| e);
    Outcome {
        consumed: Some(consumed),
        out,
        error,
    }
}

#[test]
fn agrees_with_reference_on_random_inputs() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = [b'a', b'b', b'.', b'.', b'\r', b'\r', b'\n', b'\n', 0];
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let mut input: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        input.extend_from_slice(b"\r\n.\r\n");
        let max_size = next() % 24;
        let max_line = (next() % 10) as usize + 2;
        let got = read(&input, max_size, max_line);
        let want = reference(&input, max_size, max_line);
        assert_eq!(got.consumed, want.consumed, "{input:?}");
        assert_eq!(
            got.error, want.error,
            "{input:?} size {max_size} line {max_line}"
        );
        if want.error.is_none() {
            assert_eq!(got.out, want.out, "{input:?}");
        }
        assert!(got.out.len() as u64 <= max_size);
    }
}
