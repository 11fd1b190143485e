//! Local delivery into Maildir (`<data_dir>/mail/<domain>/<user>/`), the
//! format Dovecot and every Maildir reader serve: write into `tmp/`, fsync,
//! rename into `new/`, fsync the directory.

use std::fs::{self, File};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

use tern_core::{smtp_path, Address};

use crate::Body;

pub struct Maildir {
    root: PathBuf,
    hostname: String,
    counter: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("mailbox name {0:?} is not safe as a directory name")]
    BadName(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("reading the message: {0}")]
    Store(#[from] tern_store::StoreError),
}

impl Maildir {
    pub fn new(root: PathBuf, hostname: &str) -> Maildir {
        // A host name inside a file name may not contain '/' or ':' (the
        // Maildir info separator).
        let hostname = hostname.replace(['/', ':'], "_");
        Maildir {
            root,
            hostname,
            counter: AtomicU64::new(0),
        }
    }

    /// The directory of one mailbox.
    pub fn mailbox_dir(&self, rcpt: &Address) -> Result<PathBuf, MaildirError> {
        let local = rcpt.local().to_lowercase();
        let domain = rcpt.domain();
        for part in [local.as_str(), domain] {
            if part.is_empty()
                || part.starts_with('.')
                || part.contains(['/', '\\'])
                || part.chars().any(|c| c.is_control())
            {
                return Err(MaildirError::BadName(rcpt.to_string()));
            }
        }
        Ok(self.root.join(domain).join(local))
    }

    /// Delivers one copy, adding Return-Path (RFC 5321 4.4) and Delivered-To
    /// in front, copying the body piece by piece.
    pub async fn deliver(
        &self,
        sender: &str,
        rcpt: &Address,
        body: &Body,
    ) -> Result<PathBuf, MaildirError> {
        let dir = self.mailbox_dir(rcpt)?;
        if !dir.join("new").is_dir() {
            let this_dir = dir.clone();
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || create_mailbox(&root, &this_dir))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        let name = self.unique_name(body.size());
        let tmp = dir.join("tmp").join(&name);
        let new = dir.join("new").join(&name);
        let result: Result<(), MaildirError> = async {
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .await?;
            let head = format!(
                "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
                smtp_path(sender),
                smtp_path(&rcpt.to_string())
            );
            f.write_all(head.as_bytes()).await?;
            let mut i = 0;
            while let Some(chunk) = body.chunk(i).await? {
                f.write_all(&chunk).await?;
                i += 1;
            }
            f.sync_data().await?;
            tokio::fs::rename(&tmp, &new).await?;
            let new_dir = dir.join("new");
            tokio::task::spawn_blocking(move || sync_dir(&new_dir))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        Ok(new)
    }

    /// `time.M<usec>P<pid>Q<n>.host,S=<size>`: unique per delivery (the
    /// Maildir naming convention, with Dovecot's S= size hint).
    fn unique_name(&self, size: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{:06}P{}Q{}R{:08x}.{},S={}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            rand::random::<u32>(),
            self.hostname,
            size
        )
    }
}

/// Creates a mailbox and makes its directory entries durable, so that a
/// delivery reported done survives a crash.
fn create_mailbox(root: &Path, dir: &Path) -> std::io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    sync_dir(dir)?;
    let mut d = dir.to_path_buf();
    while d.pop() && d.starts_with(root) {
        sync_dir(&d)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(b: &[u8]) -> Body {
        Body::Memory(std::sync::Arc::new(b.to_vec()))
    }

    #[tokio::test]
    async fn delivers_into_new_with_return_path() {
        let tmp = tempfile::tempdir().unwrap();
        let md = Maildir::new(tmp.path().to_path_buf(), "mx.test");
        let rcpt = Address::parse("Alice@Example.com").unwrap();
        let path = md
            .deliver(
                "bob@remote.test",
                &rcpt,
                &body(b"Subject: hi\r\n\r\nbody\r\n"),
            )
            .await
            .unwrap();
        assert!(path.starts_with(tmp.path().join("example.com/alice/new")));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text
            .starts_with("Return-Path: <bob@remote.test>\r\nDelivered-To: Alice@example.com\r\n"));
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"));
        assert_eq!(
            fs::read_dir(tmp.path().join("example.com/alice/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn refuses_unsafe_names() {
        let tmp = tempfile::tempdir().unwrap();
        let md = Maildir::new(tmp.path().to_path_buf(), "mx.test");
        for bad in ["../x@example.com", ".hidden@example.com", "a/b@example.com"] {
            let rcpt = Address::parse(bad).unwrap();
            assert!(
                md.deliver("", &rcpt, &body(b"x\r\n")).await.is_err(),
                "{bad}"
            );
        }
    }
}
