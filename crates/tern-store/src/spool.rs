//! Message bodies as files: one file per message, named by its id.
//!
//! A body is written and fsynced before its message row is committed; the
//! directory itself is fsynced once per commit batch, so the file's name is
//! durable before the row that points at it. A crash in between leaves a
//! file with no row, which `sweep` removes at the next start.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use tern_core::MessageId;

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(dir: PathBuf) -> std::io::Result<Spool> {
        fs::create_dir_all(&dir)?;
        Ok(Spool { dir })
    }

    pub fn path(&self, id: MessageId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Writes and fsyncs one body. Blocking: call from a blocking thread.
    pub fn write(&self, id: MessageId, body: &[u8]) -> std::io::Result<()> {
        let path = self.path(id);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.write_all(body)?;
            f.sync_data()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Makes the names of files written so far durable (one fsync for a batch).
    pub fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Piece `index` of a body, or `None` past its end.
    pub fn read_chunk(&self, id: MessageId, index: u32) -> std::io::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        let f = File::open(self.path(id))?;
        let len = f.metadata()?.len();
        let offset = index as u64 * crate::BODY_CHUNK as u64;
        if offset >= len && index > 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; (len - offset.min(len)).min(crate::BODY_CHUNK as u64) as usize];
        f.read_exact_at(&mut buf, offset)?;
        Ok(Some(buf))
    }

    pub fn remove(&self, id: MessageId) {
        if let Err(e) = fs::remove_file(self.path(id)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%id, error = %e, "could not remove spooled body");
            }
        }
    }

    /// Moves a body to `quarantine/` beside the spool, for inspection.
    pub fn set_aside(&self, id: MessageId) -> std::io::Result<()> {
        let dir = self.dir.with_file_name("quarantine");
        fs::create_dir_all(&dir)?;
        match fs::rename(self.path(id), dir.join(id.to_string())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every id that has a body file. Files that are not ours are ignored.
    pub fn list(&self) -> std::io::Result<Vec<MessageId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}
