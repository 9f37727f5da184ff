//! The head registry on disk: one artifact directory per model version, and the champion pointer
//! that the server watches. The registry directory is the source of truth for models: the server
//! follows it without opening the store, and a card here is what every other record (the Lance
//! `models` table, `head_scores`, `evaluations`) refers to by version.
//!
//! ```text
//! <registry>/
//!   CHAMPION.json                 {"version", "previous": [...], "updated_at"}  (atomic rename)
//!   CHALLENGER.json               {"version", "named_at", "reason"}: scored in shadow by servers
//!   .registry.lock                held while staging directories are created, renamed or swept
//!   .champion.lock                held across every read-modify-write of CHAMPION.json
//!   head-20261125T101530-3fa2c1/
//!     head.safetensors
//!     card.json
//!   .staging-<version>/ + .staging-<version>.lock   an artifact being written (lock held by its writer)
//! ```
//! Invariants: an artifact directory appears only complete (written under `.staging-*`, fsynced,
//! then renamed). A staging directory is removed only when stale: its writer's lock can be taken
//! (the writer is gone) or it has no lock file at all (a crash before the writer took it); a
//! registration in progress in another process or thread is never touched. The pointer is replaced
//! by write-fsync-rename under `.champion.lock`, so a reader sees the old or the new champion,
//! never a torn file, and two promotions never lose one another's history. Version names are plain
//! file names (`[A-Za-z0-9._-]`, not starting with a dot); a pointer naming anything else is refused.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::model::{CARD_FORMAT, ModelCard, sha256_hex};

/// Name of the champion pointer file.
pub const CHAMPION_FILE: &str = "CHAMPION.json";
/// Name of the challenger pointer file (the head servers score in shadow).
pub const CHALLENGER_FILE: &str = "CHALLENGER.json";
const WEIGHTS_FILE: &str = "head.safetensors";
const CARD_FILE: &str = "card.json";
const STAGING_PREFIX: &str = ".staging-";
const LOCK_SUFFIX: &str = ".lock";
const REGISTRY_LOCK: &str = ".registry.lock";
const CHAMPION_LOCK: &str = ".champion.lock";
/// Longest accepted version name.
const MAX_VERSION_LEN: usize = 128;

/// Makes each pointer temp file name unique within the process (the pid alone is not).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Checks that `version` is a plain file name of the registry: non-empty, at most 128 bytes of
/// `[A-Za-z0-9._-]`, not starting with `.` (so never `..`, a hidden or a staging name).
pub fn validate_version(version: &str) -> Result<(), TrainError> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && !version.starts_with('.')
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TrainError::BadVersion(version.chars().take(200).collect()))
    }
}

/// An exclusive advisory lock on a file (flock), released on drop.
struct FileLock(File);

impl FileLock {
    fn open(path: &Path) -> Result<File, TrainError> {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path))
    }

    /// Waits for the lock.
    fn acquire(path: &Path) -> Result<Self, TrainError> {
        let f = Self::open(path)?;
        f.lock().map_err(io(path))?;
        Ok(Self(f))
    }

    /// Takes the lock if nobody holds it.
    fn try_acquire(path: &Path) -> Result<Option<Self>, TrainError> {
        let f = Self::open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Self(f))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io(path)(e)),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Which head serves, and which served before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChampionPointer {
    pub version: String,
    /// Earlier champions, most recent last.
    pub previous: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

/// The head a server scores in shadow beside the champion: its scores are logged, never sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengerPointer {
    pub version: String,
    pub named_at: DateTime<Utc>,
    /// Who named it and why (`nightly <run id>: passed the gate`, `manual`).
    #[serde(default)]
    pub reason: String,
}

/// The registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Flushes a directory entry change (rename, create) to disk.
fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

impl Registry {
    /// Opens (creating) the registry and removes the staging directories whose writer is gone.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TrainError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io(&root))?;
        let reg = Self { root };
        reg.sweep_stale()?;
        Ok(reg)
    }

    /// Removes stale staging directories (see the module invariants); returns how many.
    pub fn sweep_stale(&self) -> Result<usize, TrainError> {
        let _guard = FileLock::acquire(&self.root.join(REGISTRY_LOCK))?;
        let mut removed = 0;
        for e in fs::read_dir(&self.root).map_err(io(&self.root))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(STAGING_PREFIX) || name.ends_with(LOCK_SUFFIX) {
                continue;
            }
            let lock_path = self.root.join(format!("{name}{LOCK_SUFFIX}"));
            // Staging directories and their lock files are created together under the registry
            // lock we hold, so a directory without a lock file was left by a crash.
            let writer_gone = if lock_path.exists() {
                FileLock::try_acquire(&lock_path)?
            } else {
                None
            };
            if lock_path.exists() && writer_gone.is_none() {
                continue;
            }
            let p = e.path();
            tracing::warn!(path = %p.display(), "removing an incomplete model artifact");
            fs::remove_dir_all(&p).map_err(io(&p))?;
            drop(writer_gone);
            let _ = fs::remove_file(&lock_path);
            removed += 1;
        }
        Ok(removed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pointer file the server watches.
    pub fn champion_path(&self) -> PathBuf {
        self.root.join(CHAMPION_FILE)
    }

    /// Artifact directory of a version (refused unless `version` is a valid name).
    pub fn dir_of(&self, version: &str) -> Result<PathBuf, TrainError> {
        validate_version(version)?;
        Ok(self.root.join(version))
    }

    /// Writes the artifact completely, then makes it visible in one rename. While it writes, it
    /// holds the staging directory's lock, so a concurrent `open` never removes it.
    pub fn register(&self, card: &ModelCard, weights: &[u8]) -> Result<PathBuf, TrainError> {
        let dest = self.dir_of(&card.model_version)?;
        let staging_name = format!("{STAGING_PREFIX}{}", card.model_version);
        let staging = self.root.join(&staging_name);
        let lock_path = self.root.join(format!("{staging_name}{LOCK_SUFFIX}"));
        let staging_lock = {
            let _guard = FileLock::acquire(&self.root.join(REGISTRY_LOCK))?;
            if dest.exists() || staging.exists() {
                return Err(TrainError::VersionExists(card.model_version.clone()));
            }
            let l = FileLock::acquire(&lock_path)?;
            fs::create_dir_all(&staging).map_err(io(&staging))?;
            l
        };
        let written = (|| {
            write_synced(&staging.join(WEIGHTS_FILE), weights)?;
            let json =
                serde_json::to_vec_pretty(card).map_err(|e| TrainError::Card(e.to_string()))?;
            write_synced(&staging.join(CARD_FILE), &json)?;
            sync_dir(&staging)
        })();
        let _guard = FileLock::acquire(&self.root.join(REGISTRY_LOCK))?;
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staging);
            drop(staging_lock);
            let _ = fs::remove_file(&lock_path);
            return Err(e);
        }
        fs::rename(&staging, &dest).map_err(io(&dest))?;
        drop(staging_lock);
        let _ = fs::remove_file(&lock_path);
        sync_dir(&self.root)?;
        Ok(dest)
    }

    /// A version's card and verified weights.
    pub fn load(&self, version: &str) -> Result<(ModelCard, Vec<u8>), TrainError> {
        let dir = self.dir_of(version)?;
        if !dir.join(CARD_FILE).is_file() {
            return Err(TrainError::UnknownVersion(version.to_string()));
        }
        let card = read_card(&dir.join(CARD_FILE))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = fs::read(&weights_path).map_err(io(&weights_path))?;
        let got = sha256_hex(&weights);
        if got != card.weights_sha256 {
            return Err(TrainError::Corrupt {
                version: version.into(),
                why: format!("weights sha256 {got} ≠ card {}", card.weights_sha256),
            });
        }
        Ok((card, weights))
    }

    /// Every registered card, oldest first.
    pub fn list(&self) -> Result<Vec<ModelCard>, TrainError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io(&self.root))?.flatten() {
            if validate_version(&e.file_name().to_string_lossy()).is_err() {
                continue;
            }
            let card = e.path().join(CARD_FILE);
            if card.is_file() {
                out.push(read_card(&card)?);
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.model_version.cmp(&b.model_version))
        });
        Ok(out)
    }

    /// The current champion, if one was ever promoted.
    pub fn champion(&self) -> Result<Option<ChampionPointer>, TrainError> {
        read_pointer(&self.champion_path())
    }

    /// Writes a pointer file by write-fsync-rename (readers see the old or the new one).
    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<(), TrainError> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let json = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Card(e.to_string()))?;
        write_synced(&tmp, &json)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.root)
    }

    fn write_pointer(&self, p: &ChampionPointer) -> Result<(), TrainError> {
        self.write_json(CHAMPION_FILE, p)
    }

    /// The pointer file servers read to score a challenger in shadow.
    pub fn challenger_path(&self) -> PathBuf {
        self.root.join(CHALLENGER_FILE)
    }

    /// The head named for shadow scoring, if any.
    pub fn challenger(&self) -> Result<Option<ChallengerPointer>, TrainError> {
        read_challenger(&self.challenger_path())
    }

    /// Names `version` (registered, not the champion) as the challenger servers score in shadow,
    /// replacing any other.
    pub fn set_challenger(
        &self,
        version: &str,
        reason: &str,
    ) -> Result<ChallengerPointer, TrainError> {
        self.load(version)?;
        let _guard = FileLock::acquire(&self.root.join(CHAMPION_LOCK))?;
        if self.champion()?.is_some_and(|c| c.version == version) {
            return Err(TrainError::Card(format!(
                "{version} is the champion; a challenger must be another head"
            )));
        }
        if let Some(c) = self.challenger()?.filter(|c| c.version == version) {
            return Ok(c);
        }
        let p = ChallengerPointer {
            version: version.to_string(),
            named_at: Utc::now(),
            reason: reason.to_string(),
        };
        self.write_json(CHALLENGER_FILE, &p)?;
        Ok(p)
    }

    /// Stops shadow scoring; returns the challenger that was named.
    pub fn clear_challenger(&self) -> Result<Option<ChallengerPointer>, TrainError> {
        let _guard = FileLock::acquire(&self.root.join(CHAMPION_LOCK))?;
        self.remove_challenger()
    }

    /// Removes the challenger pointer; the caller holds the champion lock.
    fn remove_challenger(&self) -> Result<Option<ChallengerPointer>, TrainError> {
        let old = self.challenger()?;
        let path = self.challenger_path();
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        Ok(old)
    }

    /// Makes `version` the champion (it must be registered), remembering the one it replaces.
    /// A challenger pointer naming `version` is removed: it serves now.
    pub fn set_champion(&self, version: &str) -> Result<ChampionPointer, TrainError> {
        self.load(version)?;
        let _guard = FileLock::acquire(&self.root.join(CHAMPION_LOCK))?;
        if self.challenger()?.is_some_and(|c| c.version == version) {
            self.remove_challenger()?;
        }
        let mut previous = Vec::new();
        if let Some(old) = self.champion()? {
            if old.version == version {
                return Ok(old);
            }
            previous = old.previous;
            previous.push(old.version);
        }
        let p = ChampionPointer {
            version: version.to_string(),
            previous,
            updated_at: Utc::now(),
        };
        self.write_pointer(&p)?;
        Ok(p)
    }

    /// Restores the previous champion.
    pub fn rollback(&self) -> Result<ChampionPointer, TrainError> {
        let _guard = FileLock::acquire(&self.root.join(CHAMPION_LOCK))?;
        let cur = self.champion()?.ok_or(TrainError::NoChampion)?;
        let mut previous = cur.previous;
        let back = previous.pop().ok_or(TrainError::NothingToRollBack)?;
        let p = ChampionPointer {
            version: back,
            previous,
            updated_at: Utc::now(),
        };
        self.write_pointer(&p)?;
        Ok(p)
    }
}

/// Reads a pointer file (`None` when absent).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, TrainError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TrainError::Card(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TrainError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a champion pointer file (`None` when absent). A pointer naming a version that is not a
/// plain name of the registry (`../x`, `/abs`) is refused.
pub fn read_pointer(path: &Path) -> Result<Option<ChampionPointer>, TrainError> {
    let p: Option<ChampionPointer> = read_json(path)?;
    if let Some(p) = &p {
        validate_version(&p.version)?;
        p.previous.iter().try_for_each(|v| validate_version(v))?;
    }
    Ok(p)
}

/// Reads a challenger pointer file (`None` when absent), refusing a version that is not a plain
/// name of the registry.
pub fn read_challenger(path: &Path) -> Result<Option<ChallengerPointer>, TrainError> {
    let p: Option<ChallengerPointer> = read_json(path)?;
    if let Some(p) = &p {
        validate_version(&p.version)?;
    }
    Ok(p)
}

fn read_card(path: &Path) -> Result<ModelCard, TrainError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Card(format!("{}: {e}", path.display())))?;
    let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format > CARD_FORMAT as u64 {
        return Err(TrainError::Card(format!(
            "{}: card format {format} is newer than this build's {CARD_FORMAT}",
            path.display()
        )));
    }
    serde_json::from_value(v).map_err(|e| TrainError::Card(format!("{}: {e}", path.display())))
}
