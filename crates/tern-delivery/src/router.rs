//! Picks the agent for each recipient: the local Maildir for local domains,
//! remote SMTP for everything else.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Attempt, Directory, Job, Maildir, Transport};

pub struct Router {
    directory: Directory,
    maildir: Arc<Maildir>,
}

impl Router {
    pub fn new(directory: Directory, maildir: Maildir) -> Router {
        Router {
            directory,
            maildir: Arc::new(maildir),
        }
    }

    async fn deliver_local(&self, job: &Job, rcpt: &tern_core::Address) -> Attempt {
        let maildir = self.maildir.clone();
        let (sender, rcpt, body) = (job.sender.clone(), rcpt.clone(), job.body.clone());
        let result =
            tokio::task::spawn_blocking(move || maildir.deliver(&sender, &rcpt, &body)).await;
        match result {
            Ok(Ok(path)) => Attempt::Delivered(format!(
                "250 2.0.0 delivered to maildir ({})",
                path.display()
            )),
            Ok(Err(crate::maildir::MaildirError::BadName(name))) => {
                Attempt::Permanent(format!("550 5.1.3 mailbox name {name:?} is not usable"))
            }
            Ok(Err(e)) => Attempt::Temporary(format!("451 4.3.0 local delivery failed: {e}")),
            Err(e) => Attempt::Temporary(format!("451 4.3.0 local delivery failed: {e}")),
        }
    }
}

#[async_trait]
impl Transport for Router {
    async fn deliver(&self, job: &Job) -> Vec<Attempt> {
        let mut out = Vec::with_capacity(job.recipients.len());
        for rcpt in &job.recipients {
            let attempt = if self.directory.is_local_domain(rcpt.domain()) {
                self.deliver_local(job, rcpt).await
            } else {
                // Outbound SMTP (MX lookup, remote delivery) is not part of
                // this build yet; the recipient waits in the queue and is
                // retried on schedule, so nothing is lost.
                Attempt::Temporary(
                    "451 4.4.0 remote delivery is not available in this version".into(),
                )
            };
            out.push(attempt);
        }
        out
    }
}
