//! Message bodies as files: one file per message, named by its id.
//!
//! A body is written and fsynced before its message row is committed; the
//! directory itself is fsynced once per commit batch, so the file's name is
//! durable before the row that points at it. A crash in between leaves a
//! file with no row, which `sweep` removes at the next start.
//!
//! Files are recycled: a body no longer needed is renamed into `.free/`
//! and the next body is written over it, instead of one file created and
//! one deleted per message. Creating files at a high rate is what a file
//! system does worst: ext4 without a journal scans past every inode freed
//! in the last few seconds to allocate a new one, and at a thousand
//! 100 KiB messages a second that scan took most of the CPU. A recycled
//! file keeps its inode and its blocks, so writing a body of about the
//! same size allocates nothing. The pool is bounded (`FREE_BUDGET`), and
//! files larger than `FREE_MAX_FILE` are deleted rather than kept.
//!
//! A large message received into a file (`StagedFile`) is not copied: Tern's
//! header fields are written into the room left in front of it, and the
//! file is linked into the spool under the message's id. Such a file
//! starts with `LINKED_MAGIC` and the offset of the message's first octet
//! (`LINKED_PREFIX`); what lies between is unused, and takes no disk
//! blocks. No message file starts with a NUL (every stored message starts
//! with a header field Tern wrote), so the two kinds cannot be confused.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tern_core::MessageId;

use crate::{MessageBody, StagedFile};

/// Most octets kept in recycled files: enough for the bodies released in
/// one of the releaser's ticks at a few hundred MB/s, small beside a queue.
const FREE_BUDGET: u64 = 128 * 1024 * 1024;

/// Larger files are deleted when released: big bodies are rare, and one
/// would hold a large part of the budget.
const FREE_MAX_FILE: u64 = 1024 * 1024;

/// The first octets of a spool file that was a staged file.
const LINKED_MAGIC: [u8; 8] = *b"\0tern-1\0";
/// The magic, then the offset of the message (little-endian `u64`).
const LINKED_PREFIX: u64 = 16;

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    free: Arc<Mutex<FreeFiles>>,
}

/// The recycled files in `.free/`, named by number.
#[derive(Debug, Default)]
struct FreeFiles {
    /// (name, length) of each file, the last released first out.
    files: Vec<(u64, u64)>,
    bytes: u64,
    next_name: u64,
}

impl Spool {
    pub fn open(dir: PathBuf) -> std::io::Result<Spool> {
        fs::create_dir_all(dir.join(".free"))?;
        let mut free = FreeFiles::default();
        // Another process with the store open (the CLI beside a running
        // server) may take or add files meanwhile: renames are atomic, and
        // a file gone by the time it is looked at is skipped.
        for entry in fs::read_dir(dir.join(".free"))? {
            let entry = entry?;
            let name = entry.file_name().to_str().and_then(|n| n.parse().ok());
            let Ok(meta) = entry.metadata() else { continue };
            let len = meta.len();
            // A file with another name too is never reused: a file system
            // without a journal can lose half of a rename in a power
            // failure, leaving a body both in `.free/` and under its id.
            let single = std::os::unix::fs::MetadataExt::nlink(&meta) == 1;
            match name {
                Some(n) if single && free.bytes + len <= FREE_BUDGET && len <= FREE_MAX_FILE => {
                    free.files.push((n, len));
                    free.bytes += len;
                    free.next_name = free.next_name.max(n + 1);
                }
                _ => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Spool {
            dir,
            free: Arc::new(Mutex::new(free)),
        })
    }

    fn free_path(&self, name: u64) -> PathBuf {
        self.dir.join(".free").join(name.to_string())
    }

    /// A recycled file renamed to `id`'s name, when there is one.
    fn reuse(&self, id: MessageId) -> Option<File> {
        let (name, len) = {
            let mut free = self.free.lock().expect("not poisoned");
            let (name, len) = free.files.pop()?;
            free.bytes -= len;
            (name, len)
        };
        let path = self.path(id);
        let renamed = fs::rename(self.free_path(name), &path);
        match renamed.and_then(|_| OpenOptions::new().write(true).open(&path)) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, len, "could not reuse a spool file");
                None
            }
        }
    }

    pub fn path(&self, id: MessageId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Writes and fsyncs one body. Blocking: call from a blocking thread.
    pub fn write(&self, id: MessageId, body: &[u8]) -> std::io::Result<()> {
        self.write_with(id, body.len() as u64, |f| f.write_all(body))
    }

    /// Writes and fsyncs a message body of either kind. A staged body's
    /// file becomes the spool file when it has room for `head` and can be
    /// linked into the spool; otherwise it is copied by the kernel
    /// (`copy_file_range`). Never through memory. Blocking: call from a
    /// blocking thread.
    pub fn write_body(&self, id: MessageId, body: &MessageBody) -> std::io::Result<()> {
        match body {
            MessageBody::Memory(b) => self.write(id, b),
            MessageBody::Staged { head, file } => {
                if self.link(id, head, file)? {
                    return Ok(());
                }
                self.write_with(id, body.len(), |f| {
                    f.write_all(head)?;
                    crate::copy_file_part(&file.file, file.start, file.len, f)
                })
            }
        }
    }

    /// Makes `staged`, with `head` in front, the spool file of `id`: the
    /// prefix and `head` go into the room in front of the message, and
    /// the file gets the name. `false` when that cannot be done here (no
    /// room, a file system without linkable unnamed files, or the spool on
    /// another file system); nothing is named then.
    fn link(&self, id: MessageId, head: &[u8], staged: &StagedFile) -> std::io::Result<bool> {
        let Some(start) = staged.start.checked_sub(head.len() as u64) else {
            return Ok(false);
        };
        if start < LINKED_PREFIX {
            return Ok(false);
        }
        let mut prefix = [0u8; LINKED_PREFIX as usize];
        prefix[..8].copy_from_slice(&LINKED_MAGIC);
        prefix[8..].copy_from_slice(&start.to_le_bytes());
        staged.file.write_all_at(&prefix, 0)?;
        staged.file.write_all_at(head, start)?;
        let path = self.path(id);
        if let Err(e) = link_unnamed(&staged.file, &path) {
            if !cannot_link_here(&e) {
                return Err(e);
            }
            // Said once at `warn`: every large message will be copied.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(error = %e, "large messages cannot be linked into the spool here; copying them")
            });
            tracing::debug!(error = %e, "could not link a staged file; copying it");
            return Ok(false);
        }
        // `sync_all`, not `sync_data`: the link count is the inode's, and
        // a file system without a journal writes it only with the inode.
        // The name itself is made durable with the directory's fsync, in
        // the commit batch (`sync_dir`).
        if let Err(e) = staged.file.sync_all() {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(true)
    }

    fn write_with(
        &self,
        id: MessageId,
        len: u64,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let path = self.path(id);
        let result = (|| {
            let mut f = match self.reuse(id) {
                Some(f) => f,
                None => OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?,
            };
            fill(&mut f)?;
            // A recycled file may be longer than this body.
            f.set_len(len)?;
            f.sync_data()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Makes the names of files written so far durable (one fsync for a
    /// batch). `.free/` first: a body renamed out of it must not come back
    /// there after a power failure, to be written over while its message
    /// is queued.
    pub fn sync_dir(&self) -> std::io::Result<()> {
        match File::open(self.dir.join(".free")) {
            Ok(free) => free.sync_all()?,
            // Removed by hand: then nothing is recycled (see `recycle`).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        File::open(&self.dir)?.sync_all()
    }

    /// A body's file, where its message starts in it, and its length.
    fn open_body(&self, id: MessageId) -> std::io::Result<(File, u64, u64)> {
        open_message(&self.path(id))
    }

    /// The length of a body, or `None` when it has no file.
    pub fn body_len(&self, id: MessageId) -> std::io::Result<Option<u64>> {
        match self.open_body(id) {
            Ok((_, _, len)) => Ok(Some(len)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Piece `index` of a body, or `None` past its end.
    pub fn read_chunk(&self, id: MessageId, index: u32) -> std::io::Result<Option<Vec<u8>>> {
        let (f, start, len) = self.open_body(id)?;
        let offset = index as u64 * crate::BODY_CHUNK as u64;
        if offset >= len && index > 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; (len - offset.min(len)).min(crate::BODY_CHUNK as u64) as usize];
        f.read_exact_at(&mut buf, start + offset)?;
        Ok(Some(buf))
    }

    /// Deletes a body. For a message that a delivery may still be reading
    /// (deleted from the queue): its open file must never be written over.
    pub fn remove(&self, id: MessageId) {
        if let Err(e) = fs::remove_file(self.path(id)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%id, error = %e, "could not remove spooled body");
            }
        }
    }

    /// Removes a body nothing reads any more (its message is final, or was
    /// never committed): into the pool of files to recycle while it has
    /// room, else deleted. Neither needs to be durable: after a crash, a
    /// body file with no row is found again by `sweep`.
    pub fn recycle(&self, id: MessageId) {
        let path = self.path(id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => u64::MAX,
        };
        let name = {
            let mut free = self.free.lock().expect("not poisoned");
            if len > FREE_MAX_FILE || free.bytes + len > FREE_BUDGET {
                None
            } else {
                // Counted now, so that concurrent removals keep to the budget.
                free.bytes += len;
                free.next_name += 1;
                Some(free.next_name - 1)
            }
        };
        let result = match name {
            Some(name) => match fs::rename(&path, self.free_path(name)) {
                Ok(()) => {
                    self.free
                        .lock()
                        .expect("not poisoned")
                        .files
                        .push((name, len));
                    Ok(())
                }
                // `.free/` gone (removed by hand, say): delete instead.
                Err(_) => {
                    self.free.lock().expect("not poisoned").bytes -= len;
                    fs::remove_file(&path)
                }
            },
            None => fs::remove_file(&path),
        };
        if let Err(e) = result {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%id, error = %e, "could not remove spooled body");
            }
        }
    }

    /// Moves a body to `quarantine/` beside the spool, for inspection.
    /// The file is renamed as it is, so that what is found damaged is kept
    /// whole; a linked file whose prefix is intact is then rewritten as
    /// the plain message (through a temporary file renamed over it), so
    /// that the files there can be read or sent again as they are.
    /// Blocking: call from a blocking thread.
    pub fn set_aside(&self, id: MessageId) -> std::io::Result<()> {
        let dir = self.dir.with_file_name("quarantine");
        fs::create_dir_all(&dir)?;
        let to = dir.join(id.to_string());
        match fs::rename(self.path(id), &to) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r?,
        }
        let (f, start, len) = open_message(&to)?;
        if start > 0 && len > 0 {
            let plain = dir.join(format!("{id}.tmp"));
            let written = (|| {
                let mut out = File::create(&plain)?;
                crate::copy_file_part(&f, start, len, &mut out)?;
                out.sync_data()?;
                fs::rename(&plain, &to)
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&plain);
                tracing::warn!(%id, error = %e, "quarantined body kept with its spool prefix");
            }
        }
        Ok(())
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

/// A spool file, where its message starts in it (after the prefix and
/// room of a linked file), and the message's length.
fn open_message(path: &Path) -> std::io::Result<(File, u64, u64)> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut prefix = [0u8; LINKED_PREFIX as usize];
    let start = match f.read_exact_at(&mut prefix, 0) {
        Ok(()) if prefix[..8] == LINKED_MAGIC => {
            u64::from_le_bytes(prefix[8..].try_into().expect("8 octets"))
        }
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
        Err(e) => return Err(e),
    };
    // A file cut short (by hand, or a damaged disk) reads as short; the
    // queue compares the length with the message's size.
    let len = size.saturating_sub(start);
    Ok((f, start.min(size), len))
}

/// Whether linking failed because this system cannot link an unnamed file
/// into the spool (so copying is the way), rather than because the disk
/// failed or is full (which copying would not get past either).
fn cannot_link_here(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EXDEV // the spool on another file system than data_dir
                | libc::ENOENT // no O_TMPFILE (the file was unlinked), or no /proc
                | libc::EPERM
                | libc::EACCES
                | libc::EOPNOTSUPP
                | libc::EINVAL
                | libc::ENOSYS
                | libc::EMLINK
                | libc::ELOOP
        )
    )
}

/// Gives an unnamed file (`O_TMPFILE`) the name `path`. The file's
/// `/proc/self/fd` entry stands for it, as open(2) describes for linking
/// such a file without privileges.
fn link_unnamed(file: &File, path: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the spool path"))?;
    // SAFETY: both are valid NUL-terminated paths for the call's length.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(id: MessageId, spool: &Spool) -> Vec<u8> {
        fs::read(spool.path(id)).unwrap()
    }

    #[test]
    fn a_recycled_file_holds_exactly_the_new_body() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let (a, b, c) = (
            MessageId::generate(),
            MessageId::generate(),
            MessageId::generate(),
        );
        spool.write(a, &[b'a'; 5000]).unwrap();
        spool.recycle(a);
        assert!(!spool.path(a).exists());
        assert_eq!(spool.free.lock().unwrap().files.len(), 1);

        // Shorter than the file it reuses: nothing of the old body is left.
        spool.write(b, b"short").unwrap();
        assert_eq!(body(b, &spool), b"short");
        assert!(spool.free.lock().unwrap().files.is_empty());
        spool.recycle(b);

        // Longer: grows.
        spool.write(c, &[b'c'; 9000]).unwrap();
        assert_eq!(body(c, &spool), vec![b'c'; 9000]);
        assert_eq!(spool.list().unwrap(), vec![c]);
    }

    fn staged(dir: &Path, message: &[u8]) -> StagedFile {
        let mut f = StagedFile::create_in(dir).unwrap();
        f.append(message).unwrap();
        f
    }

    fn whole(spool: &Spool, id: MessageId) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0.. {
            match spool.read_chunk(id, i).unwrap() {
                Some(p) if !p.is_empty() => out.extend_from_slice(&p),
                _ => break,
            }
        }
        out
    }

    #[test]
    fn a_staged_file_becomes_the_spool_file_without_a_copy() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let message: Vec<u8> = (0..2_500_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let file = staged(dir.path(), &message);
        let inode = file.file.metadata().unwrap().ino();
        let id = MessageId::generate();
        let body = MessageBody::Staged {
            head: b"Received: here\r\n".to_vec(),
            file,
        };
        spool.write_body(id, &body).unwrap();

        // The same file, now with a name: linked, not copied.
        let meta = fs::metadata(spool.path(id)).unwrap();
        assert_eq!(meta.ino(), inode);
        assert_eq!(meta.nlink(), 1);
        let mut expected = b"Received: here\r\n".to_vec();
        expected.extend_from_slice(&message);
        assert_eq!(spool.body_len(id).unwrap(), Some(expected.len() as u64));
        assert!(whole(&spool, id) == expected);
        // The room in front is a hole: it takes no disk blocks beyond the
        // one the prefix is in and the one or two `head` is in.
        assert!(meta.blocks() * 512 < expected.len() as u64 + 3 * 4096);

        // Set aside, it is a plain message again.
        spool.set_aside(id).unwrap();
        assert!(!spool.path(id).exists());
        let aside = fs::read(dir.path().join("quarantine").join(id.to_string())).unwrap();
        assert!(aside == expected);
    }

    #[test]
    fn a_staged_file_without_room_for_its_head_is_copied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let message = vec![b'x'; 100_000];
        let file = staged(dir.path(), &message);
        let inode = file.file.metadata().unwrap().ino();
        let head = vec![b'h'; crate::STAGED_ROOM as usize];
        let id = MessageId::generate();
        spool
            .write_body(
                id,
                &MessageBody::Staged {
                    head: head.clone(),
                    file,
                },
            )
            .unwrap();
        assert_ne!(fs::metadata(spool.path(id)).unwrap().ino(), inode);
        let mut expected = head;
        expected.extend_from_slice(&message);
        assert!(body(id, &spool) == expected, "a plain file, no prefix");
        assert_eq!(spool.body_len(id).unwrap(), Some(expected.len() as u64));

        // Released, a linked file goes into `.free/` like any small file;
        // written over, it is a plain file again, prefix and room gone.
        let linked = MessageId::generate();
        let file = staged(dir.path(), &message);
        let inode = file.file.metadata().unwrap().ino();
        let head = b"H: 1\r\n".to_vec();
        spool
            .write_body(linked, &MessageBody::Staged { head, file })
            .unwrap();
        spool.recycle(linked);
        assert!(!spool.path(linked).exists());
        assert_eq!(spool.body_len(linked).unwrap(), None);
        let reused = MessageId::generate();
        spool
            .write(reused, b"Subject: reused\r\n\r\nhi\r\n")
            .unwrap();
        assert_eq!(fs::metadata(spool.path(reused)).unwrap().ino(), inode);
        assert_eq!(body(reused, &spool), b"Subject: reused\r\n\r\nhi\r\n");
        assert_eq!(spool.body_len(reused).unwrap(), Some(23));
    }

    #[test]
    fn a_damaged_linked_file_is_set_aside_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let id = MessageId::generate();
        let file = staged(dir.path(), &[b'm'; 200_000]);
        let head = b"H: 1\r\n".to_vec();
        spool
            .write_body(id, &MessageBody::Staged { head, file })
            .unwrap();
        // Cut short inside the room: no message left to copy out.
        let f = OpenOptions::new().write(true).open(spool.path(id)).unwrap();
        f.set_len(1000).unwrap();
        assert_eq!(spool.body_len(id).unwrap(), Some(0));
        spool.set_aside(id).unwrap();
        let aside = fs::read(dir.path().join("quarantine").join(id.to_string())).unwrap();
        assert_eq!(aside.len(), 1000, "kept as found");
        assert_eq!(aside[..8], LINKED_MAGIC);
        assert!(!spool.path(id).exists());
    }

    #[test]
    fn without_its_free_directory_a_released_body_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let id = MessageId::generate();
        spool.write(id, b"x").unwrap();
        fs::remove_dir(dir.path().join("spool").join(".free")).unwrap();
        spool.recycle(id);
        assert!(!spool.path(id).exists());
        assert_eq!(spool.free.lock().unwrap().bytes, 0);
        assert!(spool.free.lock().unwrap().files.is_empty());
    }

    #[test]
    fn a_free_file_with_a_second_name_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let spool = Spool::open(spool_dir.clone()).unwrap();
        let id = MessageId::generate();
        spool.write(id, b"queued body").unwrap();
        // As a lost half of a rename would leave it.
        fs::hard_link(spool.path(id), spool_dir.join(".free").join("7")).unwrap();
        let reopened = Spool::open(spool_dir.clone()).unwrap();
        assert!(reopened.free.lock().unwrap().files.is_empty());
        assert!(!spool_dir.join(".free").join("7").exists());
        reopened.write(MessageId::generate(), b"other").unwrap();
        assert_eq!(body(id, &reopened), b"queued body");
    }

    #[test]
    fn free_files_survive_a_restart_and_the_pool_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let small = MessageId::generate();
        spool.write(small, b"x").unwrap();
        let big = MessageId::generate();
        spool
            .write(big, &vec![0u8; FREE_MAX_FILE as usize + 1])
            .unwrap();
        let deleted = MessageId::generate();
        spool.write(deleted, b"y").unwrap();
        spool.recycle(small);
        // Too large to keep: deleted.
        spool.recycle(big);
        assert!(!spool.path(big).exists());
        // Deleted from the queue: never recycled (a delivery may still
        // have it open).
        spool.remove(deleted);
        assert_eq!(spool.free.lock().unwrap().files.len(), 1);

        let reopened = Spool::open(dir.path().join("spool")).unwrap();
        let free = reopened.free.lock().unwrap();
        assert_eq!(free.files.len(), 1);
        assert_eq!(free.bytes, 1);
        assert!(free.next_name > free.files[0].0);
        drop(free);
        assert!(reopened.list().unwrap().is_empty());
    }
}
