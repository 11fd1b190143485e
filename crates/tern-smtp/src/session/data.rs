//! DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030), and handing the finished
//! message to the queue: the client hears 250 only once it is on disk.

use tern_core::{Envelope, MessageId};
use tern_proto::{ChunkChecker, DataError, DataReader, Reply, ReversePath};
use tern_store::MessageInfo;

use super::incoming::Received;
use super::{Session, State, Transaction};
use crate::headers::{self, TraceInfo};
use crate::submit::Refusal;
use tern_auth::inbound::{DmarcVerdict, Requested};

impl Session {
    /// Checks that a transaction can take message data now.
    fn ready_for_data(&mut self) -> Result<(), Reply> {
        match &self.tx {
            None => Err(Reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.recipients.is_empty() => {
                Err(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn data(&mut self) {
        if let Err(reply) = self.ready_for_data() {
            self.error(reply);
            return;
        }
        if self.tx.as_ref().is_some_and(|t| t.chunks.is_some()) {
            // RFC 3030 2: DATA and BDAT do not mix in one transaction.
            self.error(Reply::bad_sequence("DATA not allowed after BDAT"));
            return;
        }
        let limits = &self.ctx.config.limits;
        let reader = DataReader::new(limits.max_message_size, limits.max_text_line);
        self.state = State::Data(Box::new(reader));
        self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
    }

    pub(crate) async fn end_of_data(&mut self, error: Option<DataError>) {
        let Some(tx) = self.tx.take() else { return };
        if let Some(e) = error {
            self.refuse(e, &tx);
            return;
        }
        self.accept(tx).await;
    }

    /// BDAT: the chunk's octets are always read, whatever the answer, so the
    /// session stays in step with the client.
    pub(crate) fn bdat(&mut self, size: u64, last: bool) {
        if let Some(tx) = self.tx.as_mut() {
            if tx.chunks.is_none() && !tx.recipients.is_empty() {
                let limits = &self.ctx.config.limits;
                tx.chunks = Some(ChunkChecker::new(
                    limits.max_message_size,
                    limits.max_text_line,
                ));
            }
        }
        self.state = State::Bdat {
            remaining: size,
            last,
        };
    }

    pub(crate) fn bdat_bytes(&mut self, bytes: &[u8]) {
        let Some(tx) = self.tx.as_mut() else { return };
        if tx.failed {
            return;
        }
        let Some(checker) = tx.chunks.as_mut() else {
            return;
        };
        checker.feed(bytes);
        if !checker.too_big() && checker.error().is_none() {
            tx.body.buf().extend_from_slice(bytes);
        }
    }

    pub(crate) async fn end_of_chunk(&mut self, last: bool) {
        if let Err(reply) = self.ready_for_data() {
            self.error(reply);
            return;
        }
        let tx = self.tx.as_mut().expect("checked");
        if tx.failed {
            if last {
                self.tx = None;
            }
            self.error(Reply::bad_sequence("Previous BDAT failed; send RSET"));
            return;
        }
        let Some(checker) = tx.chunks.as_ref() else {
            self.error(Reply::bad_sequence("BDAT not allowed after DATA"));
            return;
        };
        let error = if last {
            checker.finish()
        } else {
            checker.error()
        };
        if let Some(e) = error {
            tx.failed = true;
            tx.body = Default::default();
            if last {
                self.tx = None;
            }
            let reply = e.reply();
            tracing::info!(peer = %self.peer, reason = %reply, "message refused");
            self.error(reply);
            return;
        }
        if let Some(e) = tx.body.failure().filter(|_| !last).map(|e| e.to_string()) {
            // The data cannot be kept (a full disk): say so now, not after
            // the last chunk; the rest is swallowed until RSET.
            let reply = self.cannot_keep(&e);
            let tx = self.tx.as_mut().expect("checked");
            tx.failed = true;
            tx.body = Default::default();
            self.error(reply);
            return;
        }
        if !last {
            let n = tx.body.len();
            self.reply(Reply::new(250, "2.0.0", format!("{n} octets received")));
            return;
        }
        let tx = self.tx.take().expect("checked");
        self.accept(tx).await;
    }

    fn refuse(&mut self, e: DataError, tx: &Transaction) {
        let reply = e.reply();
        tracing::info!(
            peer = %self.peer,
            from = ?sender_text(&tx.sender),
            reason = %reply,
            "message refused"
        );
        self.error(reply);
    }

    /// Adds the trace and submission headers, then commits. The reply is
    /// 250 only after the queue says the message is durable.
    async fn accept(&mut self, mut tx: Transaction) {
        let incoming = std::mem::take(&mut tx.body);
        let dir = &self.ctx.config.data_dir;
        let mut received = match incoming.finish(dir).await {
            Ok(r) => r,
            Err(e) => return self.reply(self.cannot_keep(&e.to_string())),
        };
        // Before anything reads the header.
        let max_header = self.ctx.config.limits.max_header_size;
        if let Err(e) = headers::check_header_section(received.bytes(), max_header) {
            if let Some(reply) = self.unreadable(&received) {
                return self.reply(reply);
            }
            let reply = match e {
                headers::HeaderError::TooLarge(_) => Reply::new(552, "5.3.4", e.to_string()),
                headers::HeaderError::StartsFolded => Reply::new(550, "5.6.0", e.to_string()),
            };
            tracing::info!(peer = %self.peer, reason = %reply, "message refused");
            self.error(reply);
            return;
        }
        if let Some(user) = self.user.clone() {
            if let Err(refusal) = self
                .ctx
                .submit
                .check_from_header(tern_auth::Sender::User(&user), received.bytes())
                .await
            {
                if let Some(reply) = self.unreadable(&received) {
                    return self.reply(reply);
                }
                let reply = refusal_reply(&refusal);
                tracing::info!(peer = %self.peer, reason = %reply, "message refused");
                self.reject(
                    &tx.sender,
                    tx.recipients.iter().map(|r| r.to_string()).collect(),
                    reply,
                );
                return;
            }
        }
        // Only this server writes Authentication-Results with its own name.
        let own = &self.ctx.config.hostname;
        if let Some((head, from)) = tern_auth::inbound::own_results_stripped(received.bytes(), own)
        {
            received = match received.replace_head(head, from, dir).await {
                Ok(r) => r,
                Err(e) => return self.reply(self.cannot_keep(&e.to_string())),
            };
        }
        let checks = match self.inbound_checks(&tx, received.bytes()).await {
            Ok(headers) => headers,
            Err(reply) => {
                if let Some(reply) = self.unreadable(&received) {
                    return self.reply(reply);
                }
                tracing::info!(peer = %self.peer, reason = %reply, "message refused");
                self.reject(
                    &tx.sender,
                    tx.recipients.iter().map(|r| r.to_string()).collect(),
                    reply,
                );
                return;
            }
        };
        let id = MessageId::generate();
        let config = &self.ctx.config;
        let tls = self.conn.tls_description();
        let protocol = match (self.esmtp, tls.is_some(), self.user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let trace = TraceInfo {
            helo: self.helo.as_deref().unwrap_or(""),
            peer: self.peer.ip(),
            hostname: &config.hostname,
            id,
            protocol,
            tls: tls.as_deref(),
            single_recipient: (tx.accepted == 1)
                .then(|| tx.first_rcpt.as_ref().map(|a| a.to_string()))
                .flatten(),
        };
        // What goes in front of the message as received; the message itself
        // is never copied whole here (a large one stays in its file).
        let head = if self.user.is_some() {
            match self
                .ctx
                .submit
                .seal_head(id, &trace, received.bytes())
                .await
            {
                Ok(head) => head,
                Err(e) => {
                    tracing::error!(peer = %self.peer, error = %e, "cannot DKIM-sign");
                    self.reply(Reply::new(
                        451,
                        "4.3.0",
                        "Temporary signing failure, try again later",
                    ));
                    return;
                }
            }
        } else {
            let mut head = checks.into_bytes();
            head.extend_from_slice(headers::received(&trace).as_bytes());
            head
        };
        let info = MessageInfo {
            subject: tern_queue::subject_of(received.bytes()),
            ..MessageInfo::default()
        };
        let staged = received.is_staged();
        let message = match received.into_body(head) {
            Ok(message) => message,
            Err(e) => return self.reply(self.cannot_keep(&e.to_string())),
        };
        let envelope = Envelope {
            sender: match tx.sender {
                ReversePath::Null => None,
                ReversePath::Mailbox(a) => Some(a),
            },
            recipients: tx.recipients,
        };
        let from = envelope.sender_string();
        let rcpts = envelope.recipients.len();
        let size = message.len();
        match self
            .ctx
            .queue
            .submit(id, envelope, message, self.user.clone(), info)
            .await
        {
            Ok(queued) => {
                let id = queued.id;
                tracing::info!(%id, peer = %self.peer, from = ?from, rcpts, size, staged, "queued");
                self.reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")));
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cannot queue message");
                self.reply(storage_failure(&e.to_string()));
            }
        }
    }
}

impl Session {
    /// The message's data could not be kept (before the commit): logged,
    /// and the answer for the client.
    fn cannot_keep(&self, error: &str) -> Reply {
        tracing::error!(peer = %self.peer, error, "cannot keep message data");
        storage_failure(error)
    }

    /// The answer when reading the message failed (`Received::read_error`):
    /// a check that refused it read something else than the message, so
    /// the client is told to try again rather than refused for good.
    fn unreadable(&self, received: &Received) -> Option<Reply> {
        received
            .read_error()
            .map(|e| self.cannot_keep(&e.to_string()))
    }
}

/// The answer when a message cannot be kept: try again later, and say so
/// when the disk is full (RFC 3463 4.3.1, "mail system full").
fn storage_failure(error: &str) -> Reply {
    if error.contains("No space left") {
        Reply::new(451, "4.3.1", "Insufficient system storage, try again later")
    } else {
        Reply::new(451, "4.3.0", "Temporary storage failure, try again later")
    }
}

impl Session {
    /// SPF, DKIM, ARC and DMARC for mail from outside (not authenticated):
    /// the headers to add, or the refusal the policy asks for.
    async fn inbound_checks(&self, tx: &Transaction, body: &[u8]) -> Result<String, Reply> {
        let Some(checker) = self.ctx.inbound.as_ref().filter(|_| self.user.is_none()) else {
            return Ok(String::new());
        };
        let policy = self
            .ctx
            .config
            .inbound
            .policy_for(tx.recipients.iter().map(|r| r.domain()));
        let helo = self.helo.as_deref().unwrap_or("");
        let checked = checker
            .check(body, self.peer.ip(), helo, &sender_text(&tx.sender))
            .await;
        if policy.spf_reject && checked.spf == tern_auth::inbound::SpfResult::Fail {
            return Err(Reply::new(
                550,
                "5.7.23",
                format!(
                    "SPF check failed: {} does not allow mail from {}",
                    checked.spf_domain,
                    self.peer.ip()
                ),
            ));
        }
        let mut headers = checked.header;
        if let DmarcVerdict::Fail {
            domain,
            policy: requested,
        } = &checked.dmarc
        {
            match requested {
                Requested::Reject if policy.dmarc_reject => {
                    return Err(Reply::new(
                        550,
                        "5.7.1",
                        format!("Rejected by the DMARC policy of {domain} (RFC 7489 6.6)"),
                    ));
                }
                Requested::Quarantine if policy.dmarc_quarantine => {
                    headers.push_str(&format!("X-Tern-Quarantine: DMARC policy of {domain}\r\n"));
                }
                _ => {}
            }
        }
        Ok(headers)
    }
}

/// The SMTP answer to a refused submission.
pub(crate) fn refusal_reply(r: &Refusal) -> Reply {
    match r {
        Refusal::NotAllowed(t) | Refusal::BadFrom(t) => Reply::new(553, "5.7.1", t.clone()),
        Refusal::Temporary(t) => Reply::new(451, "4.3.0", t.clone()),
    }
}

fn sender_text(s: &ReversePath) -> String {
    match s {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(a) => a.to_string(),
    }
}
