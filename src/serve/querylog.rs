//! The durable query log: every answered request is appended as one JSON line
//! ([`QueryLogRecord`]) and `fdatasync`ed before the reply is sent, so an acknowledged answer
//! survives a crash. Lines go to an *active* segment; segments are sealed (renamed) when they reach
//! a size or age, and sealed segments are what the background mover ingests into Lance
//! (`pipeline::serve`). A segment left active by a crashed process is sealed on the next open.
//! Ingest is idempotent (predictions keyed by request id, samples by content hash), so replaying
//! a segment twice adds nothing.
//!
//! ```text
//! <dir>/active-<ns>.jsonl     being written (one per process)
//! <dir>/seg-<ns>.jsonl        sealed, waiting for ingest
//! <dir>/done/seg-<ns>.jsonl   ingested
//! <dir>/bad/seg-<ns>.jsonl    lines of that segment that could not be used (kept, not ingested)
//! <dir>/.owner.lock           held exclusively by the one process using the directory
//! ```
//!
//! One process owns a directory: a second server on it is refused at start (it would seal the
//! first one's live segment), and the nightly job moves sealed segments only when it can take
//! `.owner.lock`, i.e. when no server is running (a running server's mover owns its log).
//!
//! A failed write (disk full, I/O error) is cut back to the last whole record, so a torn
//! fragment never glues onto the next record; the answer is still sent and the failure counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::querylog::{QueryLogRecord, ShadowRecord};

const ACTIVE: &str = "active-";
const SEALED: &str = "seg-";

struct Active {
    file: File,
    path: PathBuf,
    records: usize,
    /// Bytes of whole records written (where a failed write is cut back to).
    len: u64,
    opened: Instant,
}

/// The append-only log of one server process.
pub struct QueryLog {
    dir: PathBuf,
    max_records: usize,
    max_age: Duration,
    active: Mutex<Option<Active>>,
    /// The directory's owner lock, held exclusively.
    _owner: File,
    /// Test seam: the next write stops after this many bytes and fails, as a full disk does.
    fault: Mutex<Option<usize>>,
}

const OWNER_LOCK: &str = ".owner.lock";

fn owner_file(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(OWNER_LOCK))
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `active-<ns>.jsonl` → `seg-<ns>.jsonl`.
fn seal(path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .replacen(ACTIVE, SEALED, 1);
    let to = path.with_file_name(name);
    std::fs::rename(path, &to)?;
    if let Some(d) = path.parent() {
        sync_dir(d)?;
    }
    Ok(to)
}

impl QueryLog {
    /// Opens the log directory as a server does, sealing segments a previous process left
    /// active. Refused while another process owns the directory.
    pub fn open(dir: &Path, max_records: usize, max_age: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("done"))?;
        let owner = owner_file(dir)?;
        match owner.try_lock() {
            Ok(()) => Self::open_with(dir, max_records, max_age, owner),
            Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
                "another process (a server or the nightly job) is using the query log {}; \
                 give each server its own serve.querylog_dir",
                dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Opens the log directory only if no server is using it (`None` when one is): how the
    /// nightly job moves sealed segments while no server runs.
    pub fn open_if_unowned(dir: &Path) -> std::io::Result<Option<Self>> {
        std::fs::create_dir_all(dir.join("done"))?;
        let owner = owner_file(dir)?;
        match owner.try_lock() {
            Ok(()) => Self::open_with(dir, 1000, Duration::from_secs(60), owner).map(Some),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn open_with(
        dir: &Path,
        max_records: usize,
        max_age: Duration,
        owner: File,
    ) -> std::io::Result<Self> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(ACTIVE))
            {
                let to = seal(&p)?;
                tracing::warn!(segment = %to.display(), "sealed a segment left by a previous process");
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_records: max_records.max(1),
            max_age,
            active: Mutex::new(None),
            _owner: owner,
            fault: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the next write stop after `bytes` bytes and fail, as a full disk does (a fault seam
    /// for tests of the recovery path; the bytes really reach the file).
    #[doc(hidden)]
    pub fn inject_write_fault(&self, bytes: usize) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }

    /// Keeps the raw `lines` of `segment` that could not be ingested in `bad/<segment name>`.
    pub fn quarantine(&self, segment: &Path, lines: &[Vec<u8>]) -> std::io::Result<PathBuf> {
        let bad = self.dir.join("bad");
        std::fs::create_dir_all(&bad)?;
        let name = segment
            .file_name()
            .ok_or_else(|| std::io::Error::other("segment has no file name"))?;
        let to = bad.join(name);
        let mut f = OpenOptions::new().create(true).append(true).open(&to)?;
        for l in lines {
            f.write_all(l)?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
        sync_dir(&bad)?;
        Ok(to)
    }

    /// Appends one record and waits for it to reach the disk. Blocking: call from a blocking
    /// thread.
    pub fn append(&self, rec: &QueryLogRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.write_lines(&line, 1, true)
    }

    /// Appends shadow records without waiting for the disk: they are best effort (the next
    /// answer's fsync or the seal flushes them), so a shadow write never holds the segment for
    /// an fsync while an answer waits to be logged. Blocking: call from a blocking thread.
    pub fn append_shadow(&self, recs: &[ShadowRecord]) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(recs.len() * 512);
        for r in recs {
            serde_json::to_writer(&mut lines, r).map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        self.write_lines(&lines, recs.len(), false)
    }

    /// Writes whole lines to the active segment (opening one if needed), `sync`ing them if
    /// asked, and seals the segment when it is full or old.
    fn write_lines(&self, lines: &[u8], records: usize, sync: bool) -> std::io::Result<()> {
        if records == 0 {
            return Ok(());
        }
        let mut guard = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let path = self.dir.join(format!("{ACTIVE}{}.jsonl", now_ns()));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            sync_dir(&self.dir)?;
            *guard = Some(Active {
                file,
                path,
                records: 0,
                len: 0,
                opened: Instant::now(),
            });
        }
        let Some(a) = guard.as_mut() else {
            return Err(std::io::Error::other("no active segment"));
        };
        let fault = self.fault.lock().unwrap_or_else(|p| p.into_inner()).take();
        let written = match fault {
            Some(n) => a
                .file
                .write_all(&lines[..n.min(lines.len())])
                .and_then(|()| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "injected write fault",
                    ))
                }),
            None => a.file.write_all(lines),
        }
        .and_then(|()| if sync { a.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Cut the torn fragment off, so the next record starts on a line of its own. If even
            // that fails, retire the segment: the next append opens a fresh one.
            let cut = a.file.set_len(a.len).and_then(|()| a.file.sync_data());
            if let Err(c) = cut {
                tracing::error!(segment = %a.path.display(), "cannot cut a failed write back ({c}); rotating");
                if let Some(a) = guard.take() {
                    drop(a.file);
                    let _ = seal(&a.path);
                }
            }
            return Err(e);
        }
        a.len += lines.len() as u64;
        a.records += records;
        if a.records >= self.max_records || a.opened.elapsed() >= self.max_age {
            let done = guard.take();
            if let Some(a) = done {
                a.file.sync_data()?;
                drop(a.file);
                seal(&a.path)?;
            }
        }
        Ok(())
    }

    /// Seals the active segment if it has records (the mover calls this before ingesting, so
    /// nothing waits longer than one mover period).
    pub fn seal_active(&self) -> std::io::Result<()> {
        let mut guard = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = guard.take() {
            a.file.sync_data()?;
            drop(a.file);
            seal(&a.path)?;
        }
        Ok(())
    }

    /// Sealed segments waiting for ingest, oldest first.
    pub fn sealed(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SEALED) && n.ends_with(".jsonl"))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Moves an ingested segment out of the way.
    pub fn mark_done(&self, segment: &Path) -> std::io::Result<()> {
        let Some(name) = segment.file_name() else {
            return Ok(());
        };
        std::fs::rename(segment, self.dir.join("done").join(name))?;
        sync_dir(&self.dir)
    }
}
