//! Command lines: `parse_command` on the input as one line, and the input
//! as a client's byte stream cut into lines by the `LineBuffer`.
//!
//! Checked: no panic; an accepted command carries no control character
//! (no command or header injection); a refusal is one well-formed reply
//! line; the LineBuffer never returns a line over its limit or holding an
//! LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{has_control, Params};
use tern_proto::{parse_command, Command, ForwardPath, LineBuffer, Mechanism, ReversePath};

fn check(line: &[u8]) {
    match parse_command(line) {
        Ok(command) => {
            assert!(!line.iter().any(|&b| b < 0x20 || b == 0x7f));
            let text = std::str::from_utf8(line).expect("accepted lines are UTF-8");
            assert!(!has_control(text));
            let mut strings = Vec::new();
            match &command {
                Command::Ehlo { host } | Command::Helo { host } => strings.push(host.clone()),
                Command::Vrfy { arg } | Command::Expn { arg } | Command::Help { arg } => {
                    strings.push(arg.clone())
                }
                Command::Mail { from, params } => {
                    if let ReversePath::Mailbox(a) = from {
                        strings.push(a.to_string());
                    }
                    strings.extend(params.auth.clone());
                    strings.extend(params.envid.clone());
                }
                Command::Rcpt { to, params } => {
                    if let ForwardPath::Mailbox(a) = to {
                        strings.push(a.to_string());
                    }
                    strings.extend(params.orcpt.clone());
                }
                Command::Auth {
                    mechanism,
                    initial_response,
                } => {
                    if let Mechanism::Other(name) = mechanism {
                        strings.push(name.clone());
                    }
                    strings.extend(initial_response.clone());
                }
                _ => {}
            }
            for s in strings {
                assert!(!has_control(&s), "{s:?} in {command:?}");
            }
        }
        Err(reply) => {
            assert!((500..=555).contains(&reply.code), "{reply}");
            let wire = reply.to_bytes();
            assert!(wire.ends_with(b"\r\n"));
            let body = &wire[..wire.len() - 2];
            assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
            assert!(wire.len() <= 512);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);

    let mut params = Params::new(data);
    let max_len = usize::from(params.byte()) * 4;
    let piece = params.piece();
    let stream = params.rest();
    let mut buffer = LineBuffer::new(max_len);
    let limit = max_len.max(2);
    for chunk in stream.chunks(piece) {
        buffer.push(chunk);
        while let Some(line) = buffer.next_line() {
            if let Ok(line) = line {
                assert!(line.len() + 2 <= limit);
                assert!(!line.contains(&b'\n'));
                check(&line);
            }
        }
    }
});
