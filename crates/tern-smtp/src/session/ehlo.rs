//! EHLO and HELO (RFC 5321 4.1.1.1).

use tern_proto::Reply;

use super::Session;

impl Session {
    pub(crate) fn ehlo(&mut self, host: String, extended: bool) {
        // RFC 5321 4.1.4: EHLO also resets any transaction in progress.
        self.tx = None;
        let hostname = self.ctx.config.hostname.clone();
        self.helo = Some(host);
        self.esmtp = extended;
        if !extended {
            self.reply(Reply::new(250, "", hostname));
            return;
        }
        let limits = &self.ctx.config.limits;
        let mut lines = vec![
            format!("{hostname} Hello [{}]", self.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", limits.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if !self.is_tls() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_allowed() && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        // RFC 2034 4: no enhanced code in the EHLO response.
        self.reply(Reply::multiline(250, "", lines));
    }
}
