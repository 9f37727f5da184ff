//! One writer per store: the nightly job's stages, and the same stages run by hand (`roadwork
//! train`, `labels import`, `teach`, …), hold an exclusive advisory lock (flock) on the store's
//! lock file while they write. The server's append-only query-log ingest does not take it (it only
//! appends content-addressed rows, which every stage tolerates).
//!
//! The lock file records its holder (pid, host, command, since). The operating system releases a
//! flock when its process dies, so a lock left by a killed run is free; taking it over is
//! reported with the dead holder's details. A held lock is an error naming its holder, never a
//! wait: a scheduler should see the overlap, not stack up jobs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the lock file inside a local store directory.
pub const WRITER_LOCK: &str = ".roadwork-writer.lock";

/// Who holds (or held) a writer lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.host,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the store is being written by {holder}; wait for it or stop it (lock file {path})")]
    Held { path: PathBuf, holder: String },
    #[error("writer lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held writer lock; released on drop (and by the OS if the process dies).
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
    /// The holder found in the file when the lock was free (a run that died holding it).
    pub took_over: Option<LockHolder>,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

impl WriterLock {
    /// The lock file for a store at `store_uri`: inside the store for a local one; for a remote
    /// store (`s3://…`), `<data_dir>/.roadwork-writer.lock`, which serialises writers on this
    /// host only (run one scheduler per remote store).
    pub fn path_for(store_uri: &str, data_dir: &Path) -> PathBuf {
        if store_uri.contains("://") {
            data_dir.join(WRITER_LOCK)
        } else {
            Path::new(store_uri).join(WRITER_LOCK)
        }
    }

    /// Takes the lock at `path` for `command`, or says who has it.
    pub fn acquire(path: &Path, command: &str) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let previous = {
            let mut text = String::new();
            // The holder's record is small; a bigger file is not ours and is just overwritten.
            let _ = (&file).take(64 << 10).read_to_string(&mut text);
            serde_json::from_str::<LockHolder>(text.trim()).ok()
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: previous.map_or_else(|| "another process".into(), |h| h.to_string()),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let me = LockHolder {
            pid: std::process::id(),
            host: host_name(),
            command: command.to_string(),
            since: chrono::Utc::now(),
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        let text = serde_json::to_string(&me).unwrap_or_default();
        file.write_all(text.as_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        if let Some(h) = &previous {
            tracing::warn!(
                "took over the store's writer lock from {h}, which is gone (it was killed or crashed)"
            );
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            took_over: previous,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // An empty file means "released cleanly"; a record left behind means the holder died.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holder_and_a_released_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(WRITER_LOCK);
        let a = WriterLock::acquire(&p, "roadwork nightly").unwrap();
        assert!(a.took_over.is_none());
        let e = WriterLock::acquire(&p, "roadwork train").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("roadwork nightly") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(a);
        let b = WriterLock::acquire(&p, "roadwork train").unwrap();
        assert!(
            b.took_over.is_none(),
            "a cleanly released lock is not a take-over"
        );
    }

    #[test]
    fn a_lock_left_by_a_dead_holder_is_taken_over_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(WRITER_LOCK);
        let dead = LockHolder {
            pid: 999_999,
            host: "elsewhere".into(),
            command: "roadwork nightly".into(),
            since: chrono::Utc::now(),
        };
        std::fs::write(&p, serde_json::to_string(&dead).unwrap()).unwrap();
        let l = WriterLock::acquire(&p, "roadwork nightly --resume").unwrap();
        assert_eq!(l.took_over, Some(dead));
    }
}
