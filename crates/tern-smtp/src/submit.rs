//! The submission path: what every authenticated source (SMTP AUTH and the
//! HTTP API) goes through between "a user handed us a message" and "it is
//! in the queue". One path, so the rules cannot drift apart: sender
//! identity, Message-ID and Date, the trace header, DKIM signing last.

use tern_auth::dkim::Signer;
use tern_auth::{Sender, SenderPolicy};
use tern_core::MessageId;

use crate::headers::{self, TraceInfo};

#[derive(Clone)]
pub struct Submitter {
    pub hostname: String,
    pub senders: SenderPolicy,
    pub signer: Signer,
}

/// Why a submission is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The sender may not use this identity (SMTP 553 5.7.1, HTTP 403).
    NotAllowed(String),
    /// The From header cannot be checked (SMTP 553 5.7.1, HTTP 422).
    BadFrom(String),
    /// A lookup failed; try again (SMTP 451 4.3.0, HTTP 503).
    Temporary(String),
}

impl Refusal {
    pub fn text(&self) -> &str {
        match self {
            Refusal::NotAllowed(t) | Refusal::BadFrom(t) | Refusal::Temporary(t) => t,
        }
    }
}

impl Submitter {
    /// Whether `who` may send as `domain` (MAIL FROM or From).
    pub async fn check_domain(
        &self,
        who: Sender<'_>,
        domain: &str,
        what: &str,
    ) -> Result<(), Refusal> {
        match self.senders.allows(who, domain).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::NotAllowed(format!(
                "{what} not allowed: {domain} is not a sender domain of {who}"
            ))),
            Err(e) => {
                tracing::error!(error = %e, "sender domain lookup failed");
                Err(Refusal::Temporary(
                    "Temporary lookup failure, try again later".into(),
                ))
            }
        }
    }

    /// Sender identity for the header: exactly one From field (RFC 5322
    /// 3.6; a second one could carry another identity past this check),
    /// and every address in it in a domain the user may send as.
    pub async fn check_from_header(&self, who: Sender<'_>, body: &[u8]) -> Result<(), Refusal> {
        // Counted by both readers: the strictest count wins.
        let (parsed, domains) = tern_auth::dkim::from_fields(body);
        let fields = headers::count_header(body, "from").max(parsed);
        if fields > 1 {
            return Err(Refusal::BadFrom("More than one From: header field".into()));
        }
        if fields == 1 && domains.is_empty() {
            return Err(Refusal::BadFrom(
                "From: header without a usable address".into(),
            ));
        }
        for domain in domains {
            self.check_domain(who, &domain, "From: header").await?;
        }
        Ok(())
    }

    /// The message as it goes to the queue: trace header, the Message-ID
    /// and Date the client left out (RFC 6409 8), the body, and the DKIM
    /// signatures on top, made after every other header change (RFC 6376 5).
    pub async fn seal(
        &self,
        id: MessageId,
        trace: &TraceInfo<'_>,
        body: &[u8],
    ) -> Result<Vec<u8>, tern_auth::dkim::DkimError> {
        let mut message = self.seal_head(id, trace, body).await?;
        message.extend_from_slice(body);
        Ok(message)
    }

    /// What `seal` puts in front of `body` (signatures, trace header,
    /// Message-ID and Date), for a message too large to copy in memory.
    pub async fn seal_head(
        &self,
        id: MessageId,
        trace: &TraceInfo<'_>,
        body: &[u8],
    ) -> Result<Vec<u8>, tern_auth::dkim::DkimError> {
        let mut head = headers::received(trace).into_bytes();
        head.extend_from_slice(headers::submission_fixes(body, id, &self.hostname).as_bytes());
        let signatures = self.signer.sign_parts(&head, body).await?;
        head.splice(0..0, signatures.into_bytes());
        Ok(head)
    }
}
