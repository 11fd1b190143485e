//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616).

use tern_proto::{sasl, Mechanism, Reply};

use super::{Flow, Session, State};

const SASL_LINE_MAX: usize = 12288;

/// Where a multi-line SASL exchange stands.
pub(crate) enum Step {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
}

impl Session {
    pub(crate) async fn auth(&mut self, mechanism: Mechanism, initial: Option<String>) -> Flow {
        if self.helo.is_none() || !self.esmtp {
            return self.error(Reply::bad_sequence("Send EHLO first"));
        }
        if self.user.is_some() {
            return self.error(Reply::bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            // RFC 4954 4: AUTH is not permitted during a mail transaction.
            return self.error(Reply::bad_sequence(
                "AUTH not permitted during a mail transaction",
            ));
        }
        if !self.auth_allowed() {
            // RFC 4954 6: 538 when the mechanism needs an encrypted channel.
            return self.error(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism; use STARTTLS first",
            ));
        }
        match mechanism {
            Mechanism::Plain => match initial {
                // RFC 4954 4: "=" is an empty initial response.
                Some(resp) if resp != "=" => self.auth_plain(&resp).await,
                _ => {
                    self.reply(Reply::new(334, "", ""));
                    self.await_response(Step::PlainResponse);
                    Flow::Continue
                }
            },
            Mechanism::Login => match initial {
                Some(resp) => match sasl::decode_login_field(&resp) {
                    Ok(username) => {
                        self.challenge(sasl::LOGIN_PASSWORD_CHALLENGE);
                        self.await_response(Step::LoginPassword { username });
                        Flow::Continue
                    }
                    Err(e) => self.auth_failed(e.reply()),
                },
                None => {
                    self.challenge(sasl::LOGIN_USERNAME_CHALLENGE);
                    self.await_response(Step::LoginUsername);
                    Flow::Continue
                }
            },
            Mechanism::Other(_) => {
                self.error(Reply::new(504, "5.5.4", "Unrecognized authentication type"))
            }
        }
    }

    /// Enters a SASL exchange: its response lines may be longer than
    /// commands (RFC 4954 4: 12288 octets).
    fn await_response(&mut self, step: Step) {
        self.input.set_max_len(SASL_LINE_MAX);
        self.state = State::Auth(step);
    }

    fn challenge(&mut self, text: &str) {
        self.out
            .extend_from_slice(format!("334 {text}\r\n").as_bytes());
    }

    pub(crate) async fn auth_response(&mut self, step: Step, line: Vec<u8>) -> Flow {
        self.input
            .set_max_len(self.ctx.config.limits.max_command_line);
        let Ok(line) = String::from_utf8(line) else {
            return self.auth_failed(Reply::new(501, "5.5.2", "Invalid base64 data"));
        };
        if sasl::is_cancel(&line) {
            return self.error(Reply::new(501, "5.0.0", "Authentication cancelled"));
        }
        match step {
            Step::PlainResponse => self.auth_plain(&line).await,
            Step::LoginUsername => match sasl::decode_login_field(&line) {
                Ok(username) => {
                    self.challenge(sasl::LOGIN_PASSWORD_CHALLENGE);
                    self.await_response(Step::LoginPassword { username });
                    Flow::Continue
                }
                Err(e) => self.auth_failed(e.reply()),
            },
            Step::LoginPassword { username } => match sasl::decode_login_field(&line) {
                Ok(password) => self.check_credentials(&username, &password, "").await,
                Err(e) => self.auth_failed(e.reply()),
            },
        }
    }

    async fn auth_plain(&mut self, b64: &str) -> Flow {
        match sasl::decode_plain(b64) {
            Ok(c) => {
                self.check_credentials(&c.username, &c.password, &c.authzid)
                    .await
            }
            Err(e) => self.auth_failed(e.reply()),
        }
    }

    async fn check_credentials(&mut self, username: &str, password: &str, authzid: &str) -> Flow {
        // Acting as another user (an authzid that differs) is not offered.
        if self.ctx.auth_throttle.blocked(self.peer.ip()) {
            tracing::warn!(peer = %self.peer, "AUTH refused: too many failures from this address");
            return self.auth_failed(Reply::new(
                454,
                "4.7.0",
                "Too many authentication failures from your address, try again later",
            ));
        }
        if !authzid.is_empty() && authzid != username {
            self.ctx.auth_throttle.failed(self.peer.ip());
            return self.auth_failed(invalid_credentials());
        }
        match self.ctx.auth.verify(username, password).await {
            Ok(true) => {
                tracing::info!(peer = %self.peer, user = ?username, "authenticated");
                self.user = Some(username.to_string());
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
                Flow::Continue
            }
            Ok(false) => {
                self.ctx.auth_throttle.failed(self.peer.ip());
                tracing::warn!(peer = %self.peer, user = ?username, "authentication failed");
                self.auth_failed(invalid_credentials())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check credentials");
                self.reply(Reply::new(454, "4.7.0", "Temporary authentication failure"));
                Flow::Continue
            }
        }
    }

    /// Counts a failed attempt; after too many the connection is closed so
    /// that one connection cannot be used to guess passwords.
    fn auth_failed(&mut self, reply: Reply) -> Flow {
        self.auth_failures += 1;
        let flow = self.error(reply);
        if self.auth_failures >= self.ctx.config.limits.max_auth_failures {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many failed authentication attempts",
            ));
            return Flow::Close;
        }
        flow
    }
}

fn invalid_credentials() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}
