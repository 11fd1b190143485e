//! A message received into a file, before it is stored.
//!
//! The file has no name (`O_TMPFILE` where the file system has it): it goes
//! away with its last handle, so a refused message, a dropped connection
//! or a crash leaves nothing behind. Nothing here is fsynced; the store
//! makes the message durable when it commits it.
//!
//! The message's octets start `STAGED_ROOM` octets into the file. The room
//! in front is a hole (it takes no disk blocks) kept for the header fields
//! Tern puts in front of the message once it has checked it (`Received:`,
//! `Authentication-Results:`, `DKIM-Signature:`), which are known only at
//! the end. The SQLite store writes them, and a prefix saying where the
//! message starts, into the room and links the file into the spool
//! instead of copying it there (see `spool.rs`): a large message is
//! written once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Room left in front of a staged message: far more than the header
/// fields Tern adds (a few kB, most of it a DKIM signature or two).
pub const STAGED_ROOM: u64 = 64 * 1024;

/// A message in a file (see `MessageBody::Staged`).
#[derive(Debug)]
pub struct StagedFile {
    pub file: File,
    /// Where the message's first octet is in the file.
    pub start: u64,
    /// The octets of the message in the file.
    pub len: u64,
}

impl StagedFile {
    /// A new, empty file in `dir`, with `STAGED_ROOM` in front.
    /// Blocking.
    pub fn create_in(dir: &Path) -> std::io::Result<StagedFile> {
        Ok(StagedFile {
            file: tempfile::tempfile_in(dir)?,
            start: STAGED_ROOM,
            len: 0,
        })
    }

    /// Appends `data` to the message. Blocking.
    pub fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, self.start + self.len)?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// A new staged file in `dir`: `head`, then this message from octet
    /// `from` on, copied in the kernel. For a message whose header section
    /// is rewritten. Blocking.
    pub fn with_head(&self, head: &[u8], from: u64, dir: &Path) -> std::io::Result<StagedFile> {
        use std::io::{Seek, SeekFrom};
        let mut out = StagedFile::create_in(dir)?;
        out.append(head)?;
        out.file.seek(SeekFrom::Start(out.start + out.len))?;
        let rest = self.len.saturating_sub(from);
        copy_file_part(&self.file, self.start + from, rest, &mut out.file)?;
        out.len += rest;
        Ok(out)
    }
}

/// Appends `len` octets of `src`, from `from` on, to `dst` at its current
/// position, copied by the kernel (`copy_file_range`), never through
/// memory. Blocking.
pub fn copy_file_part(
    src: &std::fs::File,
    from: u64,
    len: u64,
    dst: &mut std::fs::File,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut src = src;
    src.seek(SeekFrom::Start(from))?;
    let copied = std::io::copy(&mut src.take(len), dst)?;
    if copied != len {
        return Err(std::io::Error::other(format!(
            "file shorter than expected: {copied} of {len} octets"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(f: &StagedFile) -> Vec<u8> {
        let mut out = vec![0u8; f.len as usize];
        f.file.read_exact_at(&mut out, f.start).unwrap();
        out
    }

    #[test]
    fn appends_after_the_room_and_leaves_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = StagedFile::create_in(dir.path()).unwrap();
        f.append(b"Subject: x\r\n\r\n").unwrap();
        f.append(b"body\r\n").unwrap();
        assert_eq!(message(&f), b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(f.file.metadata().unwrap().len(), STAGED_ROOM + f.len);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let g = f.with_head(b"Subject: y\r\n\r\n", 14, dir.path()).unwrap();
        assert_eq!(g.start, STAGED_ROOM);
        assert_eq!(message(&g), b"Subject: y\r\n\r\nbody\r\n");
    }
}
