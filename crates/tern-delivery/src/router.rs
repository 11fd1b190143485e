//! Picks the agent for each recipient: the local Maildir for local domains,
//! remote SMTP (MX or relay) for everything else, one transaction per
//! destination domain.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tern_core::Address;

use crate::remote::RemoteDelivery;
use crate::{Attempt, Directory, Job, Maildir, Transport};

pub struct Router {
    directory: Directory,
    maildir: Arc<Maildir>,
    remote: RemoteDelivery,
}

impl Router {
    pub fn new(directory: Directory, maildir: Maildir, remote: RemoteDelivery) -> Router {
        Router {
            directory,
            maildir: Arc::new(maildir),
            remote,
        }
    }

    async fn deliver_local(&self, job: &Job, rcpt: &Address) -> Attempt {
        match self.maildir.deliver(&job.sender, rcpt, &job.body).await {
            // The file's name, not its path: replies reach API readers
            // and webhook receivers, who have no business with the
            // server's directories.
            Ok(path) => Attempt::Delivered(format!(
                "250 2.0.0 delivered to maildir ({})",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )),
            Err(crate::maildir::MaildirError::BadName(name)) => {
                Attempt::Permanent(format!("550 5.1.3 mailbox name {name:?} is not usable"))
            }
            Err(e) => Attempt::Temporary(format!("451 4.3.0 local delivery failed: {e}")),
        }
    }
}

#[async_trait]
impl Transport for Router {
    async fn deliver(&self, job: &Job) -> Vec<Attempt> {
        let mut out: Vec<Option<Attempt>> = vec![None; job.recipients.len()];
        // Remote recipients grouped by destination: all recipients of one
        // domain go in one transaction (everything, through a relay).
        let mut remote: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, rcpt) in job.recipients.iter().enumerate() {
            if self.directory.is_local_domain(rcpt.domain()) {
                out[i] = Some(self.deliver_local(job, rcpt).await);
            } else {
                let key = if self.remote.uses_relay() {
                    ""
                } else {
                    rcpt.domain()
                };
                remote.entry(key.to_string()).or_default().push(i);
            }
        }
        for (domain, idxs) in remote {
            let rcpts: Vec<String> = idxs
                .iter()
                .map(|&i| job.recipients[i].to_string())
                .collect();
            let attempts = self
                .remote
                .deliver(&domain, &job.sender, &rcpts, &job.body)
                .await;
            for (i, a) in idxs.into_iter().zip(attempts) {
                out[i] = Some(a);
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Attempt::Temporary("451 4.3.0 not attempted".into())))
            .collect()
    }
}
