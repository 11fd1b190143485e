//! RCPT TO (RFC 5321 4.1.1.3) and the relay policy: a client that has not
//! authenticated may only send to this server's own domains.

use tern_core::Address;
use tern_delivery::Resolution;
use tern_proto::{ForwardPath, Reply};

use super::Session;

impl Session {
    pub(crate) async fn rcpt(&mut self, to: ForwardPath) {
        let Some(tx) = &self.tx else {
            self.error(Reply::bad_sequence("Need MAIL before RCPT"));
            return;
        };
        if tx.accepted >= self.ctx.config.limits.max_recipients {
            // RFC 5321 4.5.3.1.10: 452 lets the client send the rest later.
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return;
        }
        let rcpt = match to {
            ForwardPath::Mailbox(a) => a,
            // RFC 5321 4.1.1.3: <Postmaster> without a domain is ours.
            ForwardPath::Postmaster => {
                let domain = self
                    .ctx
                    .directory
                    .local_domain_for_postmaster(&self.ctx.config.hostname);
                match Address::parse(&format!("postmaster@{domain}")) {
                    Ok(a) => a,
                    Err(_) => {
                        self.error(Reply::new(550, "5.1.1", "No such user here"));
                        return;
                    }
                }
            }
        };
        let authenticated = self.user.is_some();
        // Percent hacks, bang paths, quoted or @-carrying local parts and
        // address literals are how relay tests dress up a foreign address
        // (RFC 2505 2.6); a stranger gets none of them.
        if !authenticated && (!rcpt.is_plain() || rcpt.domain().starts_with('[')) {
            tracing::info!(peer = %self.peer, rcpt = ?rcpt.to_string(), "relay refused (address form)");
            let sender = tx.sender.clone();
            self.reject(
                &sender,
                vec![rcpt.to_string()],
                Reply::new(550, "5.7.1", "Relay access denied"),
            );
            return;
        }
        let resolution = match self.ctx.directory.resolve(&rcpt).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "recipient lookup failed");
                self.reply(Reply::new(
                    451,
                    "4.3.0",
                    "Temporary lookup failure, try again later",
                ));
                return;
            }
        };
        let targets = match resolution {
            Resolution::Local(targets) => targets,
            Resolution::Remote if authenticated => vec![rcpt.clone()],
            Resolution::Remote => {
                tracing::info!(peer = %self.peer, rcpt = ?rcpt.to_string(), "relay refused");
                let sender = self.tx.as_ref().expect("checked above").sender.clone();
                self.reject(
                    &sender,
                    vec![rcpt.to_string()],
                    Reply::new(550, "5.7.1", "Relay access denied"),
                );
                return;
            }
            Resolution::Unknown => {
                let sender = self.tx.as_ref().expect("checked above").sender.clone();
                self.reject(
                    &sender,
                    vec![rcpt.to_string()],
                    Reply::new(550, "5.1.1", "No such user here"),
                );
                return;
            }
        };
        let tx = self.tx.as_mut().expect("checked above");
        tx.accepted += 1;
        tx.first_rcpt = (tx.accepted == 1).then_some(rcpt);
        for t in targets {
            if !tx.recipients.contains(&t) {
                tx.recipients.push(t);
            }
        }
        self.reply(Reply::new(250, "2.1.5", "Recipient OK"));
    }
}
