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
//!
//! Answers are written by one dedicated writer thread (never the tokio blocking pool, which the
//! decodes use): it takes every record waiting, writes them with one `write` and one
//! `fdatasync` (group commit), then acknowledges each. Under load one fsync covers many answers.
//!
//! What of an image is logged is bounded: a payload that did not decode keeps only its first
//! `serve.querylog_undecodable_bytes`, and while the log's filesystem has less than
//! `serve.querylog_min_free_mib` free the server keeps answering and logging answers, without
//! their images ([`ImageCut`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::store::querylog::{ImageCut, QueryLogRecord, ShadowRecord};

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

/// Records waiting for the writer thread at most; more wait for room (the answer waits too).
const QUEUE: usize = 4096;
/// Records one group commit takes at most.
const GROUP: usize = 512;
/// How often the writer re-reads the free space of the log's filesystem.
const FREE_SPACE_EVERY: Duration = Duration::from_secs(1);
/// Default of `serve.querylog_undecodable_bytes`.
pub const UNDECODABLE_BYTES: usize = 4096;

/// The state the writer thread and the owner share.
struct Inner {
    dir: PathBuf,
    max_records: usize,
    max_age: Duration,
    active: Mutex<Option<Active>>,
    /// The directory's owner lock, held exclusively.
    _owner: File,
    /// Test seam: the next write stops after this many bytes and fails, as a full disk does.
    fault: Mutex<Option<usize>>,
    /// Free-space floor, bytes (0: none).
    min_free: AtomicU64,
    /// Bytes kept of a payload that did not decode.
    undecodable_bytes: AtomicUsize,
    /// Free bytes of the log's filesystem at the last look (`u64::MAX` before the first).
    free: AtomicU64,
    /// Below the floor at the last look.
    low: AtomicBool,
}

/// One answer for the writer thread, and where to say that it is on disk.
struct Job {
    line: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// What the log says about itself (`/healthz`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LogStatus {
    /// Free bytes of the log's filesystem at the last look.
    pub free_bytes: Option<u64>,
    /// Images are not logged: the filesystem is below `serve.querylog_min_free_mib`.
    pub below_floor: bool,
}

/// The append-only log of one server process.
pub struct QueryLog {
    inner: Arc<Inner>,
    tx: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for QueryLog {
    /// Lets the writer finish what is queued, so the owner lock is free when this returns.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable memory of the struct's
    // size; statvfs writes nothing else and keeps neither pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
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
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            max_records: max_records.max(1),
            max_age,
            active: Mutex::new(None),
            _owner: owner,
            fault: Mutex::new(None),
            min_free: AtomicU64::new(0),
            undecodable_bytes: AtomicUsize::new(UNDECODABLE_BYTES),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("querylog-writer".into())
            .spawn(move || w.run_writer(rx))?;
        Ok(Self {
            inner,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Sets the free-space floor below which images are not logged (0 turns it off) and how
    /// many bytes of an undecodable payload are kept, and looks at the free space at once.
    pub fn set_image_limits(&self, min_free_bytes: u64, undecodable_bytes: usize) {
        self.inner.min_free.store(min_free_bytes, Ordering::Relaxed);
        self.inner
            .undecodable_bytes
            .store(undecodable_bytes, Ordering::Relaxed);
        self.inner.look_at_free_space();
    }

    /// The log's view of its disk.
    pub fn status(&self) -> LogStatus {
        let free = self.inner.free.load(Ordering::Relaxed);
        LogStatus {
            free_bytes: (free != u64::MAX).then_some(free),
            below_floor: self.inner.low.load(Ordering::Relaxed),
        }
    }

    /// The part of a request's image its record keeps, and why it is cut if it is: all of it,
    /// the first bytes of a payload that did not decode, or nothing while below the floor.
    pub fn image_to_log<'a>(&self, bytes: &'a [u8], decoded: bool) -> (&'a [u8], Option<ImageCut>) {
        if self.inner.low.load(Ordering::Relaxed) {
            return (&[], Some(ImageCut::DiskFloor));
        }
        let keep = self.inner.undecodable_bytes.load(Ordering::Relaxed);
        if !decoded && bytes.len() > keep {
            return (&bytes[..keep], Some(ImageCut::Undecodable));
        }
        (bytes, None)
    }

    /// Makes the next write stop after `bytes` bytes and fail, as a full disk does (a fault seam
    /// for tests of the recovery path; the bytes really reach the file).
    #[doc(hidden)]
    pub fn inject_write_fault(&self, bytes: usize) {
        *self.inner.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }

    /// Keeps the raw `lines` of `segment` that could not be ingested in `bad/<segment name>`.
    pub fn quarantine(&self, segment: &Path, lines: &[Vec<u8>]) -> std::io::Result<PathBuf> {
        let bad = self.inner.dir.join("bad");
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

    /// Logs one answer through the writer thread and waits until it is on disk: the serving
    /// path's append (it never blocks a tokio worker, and never uses the blocking pool).
    pub async fn log(&self, rec: &QueryLogRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the query log is closed"))?;
        tx.send(Job { line, done })
            .await
            .map_err(|_| std::io::Error::other("the query-log writer has stopped"))?;
        wait.await
            .map_err(|_| std::io::Error::other("the query-log writer has stopped"))?
    }

    /// Appends one record and waits for it to reach the disk, on the calling thread. Blocking:
    /// call from a blocking thread (tools and benchmarks; the server uses [`log`](Self::log)).
    pub fn append(&self, rec: &QueryLogRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.inner.write_lines(&line, 1, true)
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
        self.inner.write_lines(&lines, recs.len(), false)
    }

    /// Seals the active segment if it has records (the mover calls this before ingesting, so
    /// nothing waits longer than one mover period).
    pub fn seal_active(&self) -> std::io::Result<()> {
        let mut guard = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = guard.take() {
            a.file.sync_data()?;
            drop(a.file);
            seal(&a.path)?;
        }
        Ok(())
    }

    /// Sealed segments waiting for ingest, oldest first.
    pub fn sealed(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.inner.dir)?
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

    /// Moves an ingested segment out of the way. The caller has made its rows durable first
    /// ([`crate::store::Store::sync`]): a segment in `done/` is one whose rows survive a power loss.
    pub fn mark_done(&self, segment: &Path) -> std::io::Result<()> {
        let Some(name) = segment.file_name() else {
            return Ok(());
        };
        let done = self.inner.dir.join("done");
        std::fs::rename(segment, done.join(name))?;
        sync_dir(&done)?;
        sync_dir(&self.inner.dir)
    }
}

/// What [`prune_done`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub segments: usize,
    pub bytes: u64,
}

/// Removes ingested segments (`done/`) last written more than `older_than` ago. Their rows are
/// in Lance, durably, before a segment reaches `done/`; the copies kept are for replaying a
/// segment by hand. Safe while a server runs: a server never touches `done/` after the move.
pub fn prune_done(dir: &Path, older_than: Duration) -> std::io::Result<Pruned> {
    let done = dir.join("done");
    let mut p = Pruned::default();
    let entries = match std::fs::read_dir(&done) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let is_segment = name
            .to_str()
            .is_some_and(|n| n.starts_with(SEALED) && n.ends_with(".jsonl"));
        let meta = e.metadata()?;
        if !is_segment || !meta.is_file() {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age > older_than {
            std::fs::remove_file(e.path())?;
            p.segments += 1;
            p.bytes += meta.len();
        }
    }
    if p.segments > 0 {
        sync_dir(&done)?;
    }
    Ok(p)
}

impl Inner {
    /// The writer thread: group commits until every sender is gone.
    fn run_writer(&self, mut rx: mpsc::Receiver<Job>) {
        let mut last_look = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            if last_look.elapsed() >= FREE_SPACE_EVERY {
                self.look_at_free_space();
                last_look = Instant::now();
            }
            let mut jobs = vec![first];
            while jobs.len() < GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let mut lines = Vec::with_capacity(jobs.iter().map(|j| j.line.len()).sum());
            for j in &jobs {
                lines.extend_from_slice(&j.line);
            }
            let r = self.write_lines(&lines, jobs.len(), true);
            for j in jobs {
                let answer = match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                // The asker may have gone (its request was cancelled): nothing to tell.
                let _ = j.done.send(answer);
            }
        }
    }

    /// Re-reads the free space and whether it is below the floor (a log line when that changes).
    fn look_at_free_space(&self) {
        let floor = self.min_free.load(Ordering::Relaxed);
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.free.store(free, Ordering::Relaxed);
                let low = floor > 0 && free < floor;
                if self.low.swap(low, Ordering::Relaxed) != low {
                    if low {
                        tracing::error!(free, floor, dir = %self.dir.display(),
                            "query-log disk below its free-space floor: answers are logged without images");
                    } else {
                        tracing::warn!(
                            free,
                            floor,
                            "query-log disk above its floor again: images are logged"
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), "cannot read the free space: {e}"),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_from_the_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let free = free_bytes(d.path()).unwrap();
        assert!(free > 0);
        assert!(free_bytes(&d.path().join("missing")).is_err());
    }

    #[test]
    fn a_floor_above_the_free_space_cuts_every_image_and_an_undecodable_payload_is_capped() {
        let d = tempfile::tempdir().unwrap();
        let log = QueryLog::open(d.path(), 10, Duration::from_secs(60)).unwrap();
        let junk = vec![7u8; 10_000];
        assert_eq!(log.image_to_log(&junk, true), (&junk[..], None));
        assert_eq!(
            log.image_to_log(&junk, false),
            (&junk[..UNDECODABLE_BYTES], Some(ImageCut::Undecodable))
        );
        assert_eq!(log.image_to_log(&junk[..10], false), (&junk[..10], None));
        log.set_image_limits(u64::MAX, 16);
        assert!(log.status().below_floor);
        assert_eq!(
            log.image_to_log(&junk, true),
            (&[][..], Some(ImageCut::DiskFloor))
        );
        log.set_image_limits(0, 16);
        assert!(!log.status().below_floor && log.status().free_bytes.is_some());
        assert_eq!(log.image_to_log(&junk, false).0.len(), 16);
    }

    #[test]
    fn old_done_segments_are_pruned_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let done = d.path().join("done");
        std::fs::create_dir_all(&done).unwrap();
        std::fs::write(done.join("seg-1.jsonl"), b"{}\n").unwrap();
        std::fs::write(done.join("notes.txt"), b"keep").unwrap();
        std::fs::write(d.path().join("seg-2.jsonl"), b"{}\n").unwrap();
        assert_eq!(
            prune_done(d.path(), Duration::from_secs(3600))
                .unwrap()
                .segments,
            0
        );
        std::thread::sleep(Duration::from_millis(20));
        let p = prune_done(d.path(), Duration::from_millis(10)).unwrap();
        assert_eq!((p.segments, p.bytes), (1, 3));
        assert!(!done.join("seg-1.jsonl").exists());
        assert!(done.join("notes.txt").exists() && d.path().join("seg-2.jsonl").exists());
        assert_eq!(
            prune_done(&d.path().join("nowhere"), Duration::ZERO)
                .unwrap()
                .segments,
            0
        );
    }
}
