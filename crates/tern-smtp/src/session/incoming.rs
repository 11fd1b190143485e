//! Message data as it arrives (DATA, RFC 5321 4.1.1.4; BDAT, RFC 3030):
//! in memory while it is small, and past `SPILL_AT` in a file
//! (`tern_store::StagedFile`, unnamed, with room in front for Tern's header
//! fields), so that a large message is never held whole in memory,
//! however many sessions send one at once.
//!
//! Once the data is complete the checks (sender, DKIM, SPF, DMARC, ARC)
//! read the file through a read-only memory map: its pages are the page
//! cache's, which the kernel can drop and read again, not memory of Tern's
//! own. The store then makes the file the stored message: Tern's header
//! fields go into the room, and the file is linked into place.

use std::path::Path;

use memmap2::MmapOptions;
use tern_store::{MessageBody, StagedFile};

use super::mapguard::GuardedMap;

/// Octets held in memory before they go to a file: the most a session
/// holds of a message at a time (plus one read).
pub(crate) const SPILL_AT: usize = 1 << 20;

/// The data of the transaction in progress.
#[derive(Default)]
pub(crate) struct Incoming {
    /// Octets not yet in the file (all of them, while the message is small).
    buf: Vec<u8>,
    file: Option<StagedFile>,
    /// Writing the file failed: the message will be refused, temporarily.
    failed: Option<std::io::Error>,
}

impl Incoming {
    /// Where the data reader appends (at most `READ_SIZE` octets before
    /// the next `spill`).
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        if self.buf.len() >= SPILL_AT / 2 {
            // Room for one more read, exactly: doubling a buffer about to
            // be spilled would make every large message's buffer 2 MiB.
            self.buf.reserve_exact(super::READ_SIZE);
        }
        &mut self.buf
    }

    /// Why writing the file failed, when it did (the message cannot be
    /// kept).
    pub(crate) fn failure(&self) -> Option<&std::io::Error> {
        self.failed.as_ref()
    }

    /// Octets received so far.
    pub(crate) fn len(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.len) + self.buf.len() as u64
    }

    /// Moves what is held in memory to the file, once there is enough of
    /// it. `dir` is where the file is made (the data directory).
    pub(crate) async fn spill(&mut self, dir: &Path) {
        if self.buf.len() >= SPILL_AT {
            self.flush(dir).await;
        }
    }

    async fn flush(&mut self, dir: &Path) {
        if self.failed.is_some() {
            // Read to the end all the same, but keep nothing.
            self.buf.clear();
            return;
        }
        let file = self.file.take();
        let mut buf = std::mem::take(&mut self.buf);
        let dir = dir.to_path_buf();
        let written = tokio::task::spawn_blocking(move || {
            let mut f = match file {
                Some(f) => f,
                None => StagedFile::create_in(&dir)?,
            };
            f.append(&buf)?;
            buf.clear();
            Ok::<_, std::io::Error>((f, buf))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        match written {
            Ok((f, buf)) => {
                self.file = Some(f);
                self.buf = buf;
            }
            Err(e) => self.failed = Some(e),
        }
    }

    /// The complete message, to check and then commit; an error when it
    /// could not be kept (a full disk: the client should try again).
    pub(crate) async fn finish(mut self, dir: &Path) -> std::io::Result<Received> {
        if self.file.is_some() {
            self.flush(dir).await;
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.file {
            None => Ok(Received::Memory(self.buf)),
            Some(file) => {
                tern_core::metrics::inc(&tern_core::metrics::METRICS.messages_received_to_file);
                Received::map(file)
            }
        }
    }
}

/// A complete message, before Tern's header fields are put in front.
pub(crate) enum Received {
    Memory(Vec<u8>),
    /// In a file, read through a memory map.
    Mapped {
        file: StagedFile,
        map: GuardedMap,
    },
}

impl Received {
    fn map(file: StagedFile) -> std::io::Result<Received> {
        // SAFETY: the file has no name and no other handle: nothing else
        // can write or truncate it while it is mapped, and the message's
        // octets are not written again (the store writes only into the
        // room in front of them).
        let map = unsafe {
            MmapOptions::new()
                .offset(file.start)
                .len(file.len as usize)
                .map(&file.file)?
        };
        Ok(Received::Mapped {
            file,
            map: GuardedMap::new(map),
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Received::Memory(b) => b,
            Received::Mapped { map, .. } => map.bytes(),
        }
    }

    /// Whether reading the message failed (a disk error under the memory
    /// map, see `mapguard`): then what was read is not the message, and
    /// nothing may be decided from it.
    pub(crate) fn read_error(&self) -> Option<std::io::Error> {
        match self {
            Received::Mapped { map, .. } if map.damaged() => Some(std::io::Error::other(
                "read error in the message's file (see the kernel log)",
            )),
            _ => None,
        }
    }

    /// The message with its first `from` octets (its header section)
    /// replaced by `head`. A message in a file gets a new file in `dir`,
    /// copied in the kernel.
    pub(crate) async fn replace_head(
        self,
        head: Vec<u8>,
        from: usize,
        dir: &Path,
    ) -> std::io::Result<Self> {
        if let Some(e) = self.read_error() {
            return Err(e);
        }
        match self {
            Received::Memory(b) => {
                let mut out = head;
                out.extend_from_slice(&b[from..]);
                Ok(Received::Memory(out))
            }
            Received::Mapped { file, map } => {
                drop(map);
                let dir = dir.to_path_buf();
                tokio::task::spawn_blocking(move || {
                    Received::map(file.with_head(&head, from as u64, &dir)?)
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
            }
        }
    }

    /// The message as it goes to the store: `head` (the header fields Tern
    /// adds) in front. A small message is joined in memory; a large one
    /// stays in its file. An error when reading it failed (`read_error`).
    pub(crate) fn into_body(self, head: Vec<u8>) -> std::io::Result<MessageBody> {
        if let Some(e) = self.read_error() {
            return Err(e);
        }
        Ok(match self {
            Received::Memory(b) => {
                let mut message = head;
                message.extend_from_slice(&b);
                MessageBody::Memory(message)
            }
            Received::Mapped { file, map } => {
                drop(map);
                MessageBody::Staged { head, file }
            }
        })
    }

    pub(crate) fn is_staged(&self) -> bool {
        matches!(self, Received::Mapped { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> Vec<u8> {
        let mut m = b"Subject: big\r\n\r\n".to_vec();
        while m.len() < n {
            m.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz\r\n");
        }
        m
    }

    async fn receive(m: &[u8], dir: &Path) -> Received {
        let mut incoming = Incoming::default();
        for piece in m.chunks(64 * 1024) {
            incoming.buf().extend_from_slice(piece);
            incoming.spill(dir).await;
            assert!(incoming.buf.len() < SPILL_AT, "at most SPILL_AT in memory");
            assert!(
                incoming.buf.capacity() <= SPILL_AT + 64 * 1024,
                "never doubled"
            );
        }
        assert_eq!(incoming.len(), m.len() as u64);
        incoming.finish(dir).await.unwrap()
    }

    #[tokio::test]
    async fn small_messages_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let m = message(10_000);
        let r = receive(&m, dir.path()).await;
        assert!(!r.is_staged());
        assert_eq!(r.bytes(), m);
        let MessageBody::Memory(b) = r.into_body(b"X: 1\r\n".to_vec()).unwrap() else {
            panic!("a small message is joined in memory")
        };
        assert_eq!(&b[..6], b"X: 1\r\n");
        assert_eq!(&b[6..], m);
    }

    #[tokio::test]
    async fn large_messages_go_to_a_file_without_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let m = message(3 * SPILL_AT + 12345);
        let r = receive(&m, dir.path()).await;
        assert!(r.is_staged());
        assert!(r.bytes() == m);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the file has no name to leave behind"
        );
        // The header section replaced, the rest copied.
        let end = memchr::memmem::find(&m, b"\r\n\r\n").unwrap() + 4;
        let r = r
            .replace_head(b"Subject: other\r\n\r\n".to_vec(), end, dir.path())
            .await
            .unwrap();
        assert!(r.is_staged());
        assert!(r.bytes()[..18] == *b"Subject: other\r\n\r\n");
        assert!(r.bytes()[18..] == m[end..]);
        let MessageBody::Staged { head, file } = r.into_body(b"X: 1\r\n".to_vec()).unwrap() else {
            panic!("a large message stays in its file")
        };
        assert_eq!(head, b"X: 1\r\n");
        assert_eq!(file.len, (18 + m.len() - end) as u64);
    }

    #[tokio::test]
    async fn a_read_error_in_the_file_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let m = message(2 * SPILL_AT);
        let r = receive(&m, dir.path()).await;
        assert!(r.read_error().is_none());
        let Received::Mapped { file, .. } = &r else {
            panic!("staged")
        };
        // What a disk error does to reads of the map: cut the file short.
        file.file.set_len(file.start + 4096).unwrap();
        let read = r.bytes().iter().filter(|b| **b != 0).count();
        assert_eq!(read, 4096, "the rest reads as zeros");
        assert!(r.read_error().is_some());
        assert!(r.into_body(b"X: 1\r\n".to_vec()).is_err());

        let r = receive(&m, dir.path()).await;
        let Received::Mapped { file, .. } = &r else {
            panic!("staged")
        };
        file.file.set_len(file.start + 4096).unwrap();
        let _ = r.bytes().iter().map(|b| *b as u64).sum::<u64>();
        assert!(r.replace_head(Vec::new(), 0, dir.path()).await.is_err());
    }
}
