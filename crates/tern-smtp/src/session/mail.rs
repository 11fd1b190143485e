//! MAIL FROM (RFC 5321 4.1.1.2) and the listener's TLS/AUTH requirements.

use tern_core::ListenerMode;
use tern_proto::{Body, MailParams, Reply, ReversePath};

use super::{Session, Transaction};

impl Session {
    pub(crate) async fn mail(&mut self, from: ReversePath, params: MailParams) {
        if self.helo.is_none() {
            self.error(Reply::bad_sequence("Send HELO/EHLO first"));
            return;
        }
        if self.tx.is_some() {
            self.error(Reply::bad_sequence("Nested MAIL command"));
            return;
        }
        let mode = self.listener.mode;
        if mode == ListenerMode::Submission && !self.is_tls() && !self.listener.allow_plaintext_auth
        {
            self.error(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
            return;
        }
        // RFC 6409 4.3 / RFC 8314: submission ports take mail from users only.
        if mode != ListenerMode::Smtp && self.user.is_none() {
            self.error(Reply::new(530, "5.7.0", "Authentication required"));
            return;
        }
        if !self.esmtp
            && (params.smtputf8 || params.size.is_some() || params.body != Body::SevenBit)
        {
            self.error(Reply::new(555, "5.5.4", "ESMTP parameters need EHLO"));
            return;
        }
        if params.body == Body::BinaryMime {
            self.error(Reply::new(555, "5.5.4", "BODY=BINARYMIME is not supported"));
            return;
        }
        // RFC 5321 4.5.3.1.10 / 3463 4.3.1: refuse politely while storage is
        // short rather than fail half-way through the data.
        let floor = self.ctx.config.limits.min_free_space;
        if crate::limits::free_space(&self.ctx.config.data_dir).is_some_and(|free| free < floor) {
            tracing::debug!(floor, "free space in the data directory is below the floor");
            self.reply(Reply::new(
                452,
                "4.3.1",
                "Insufficient system storage, try again later",
            ));
            return;
        }
        let max = self.ctx.config.limits.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            // RFC 1870 6.
            self.error(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
            return;
        }
        if let (Some(user), ReversePath::Mailbox(a)) = (&self.user, &from) {
            let what = format!("Sender <{a}>");
            if let Err(refusal) = self
                .ctx
                .submit
                .check_domain(tern_auth::Sender::User(user), a.domain(), &what)
                .await
            {
                let reply = super::data::refusal_reply(&refusal);
                if reply.code >= 500 {
                    self.reject(&from, Vec::new(), reply);
                } else {
                    self.reply(reply);
                }
                return;
            }
        }
        self.tx = Some(Transaction {
            sender: from,
            recipients: Vec::new(),
            accepted: 0,
            first_rcpt: None,
            body: Default::default(),
            chunks: None,
            failed: false,
        });
        self.reply(Reply::new(250, "2.1.0", "Sender OK"));
    }
}
