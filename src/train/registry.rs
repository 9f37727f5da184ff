//! The head registry on disk: one artifact directory per model version, and the champion pointer
//! that the server watches.
//!
//! ```text
//! <registry>/
//!   CHAMPION.json                 {"version", "previous": [...], "updated_at"}  (atomic rename)
//!   head-20261125T101530-3fa2c1/
//!     head.safetensors
//!     card.json
//! ```
//! Invariants: an artifact directory appears only complete (written under `.staging-*`, fsynced,
//! then renamed); a crash leaves at most a staging directory, removed on the next open. The pointer
//! is replaced by write-fsync-rename, so a reader sees the old or the new champion, never a torn
//! file. `previous` is the promotion history that `rollback` walks back.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::model::{CARD_FORMAT, ModelCard, sha256_hex};

/// Name of the champion pointer file.
pub const CHAMPION_FILE: &str = "CHAMPION.json";
const WEIGHTS_FILE: &str = "head.safetensors";
const CARD_FILE: &str = "card.json";
const STAGING_PREFIX: &str = ".staging-";

/// Which head serves, and which served before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChampionPointer {
    pub version: String,
    /// Earlier champions, most recent last.
    pub previous: Vec<String>,
    pub updated_at: DateTime<Utc>,
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
    /// Opens (creating) the registry and removes staging directories left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TrainError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io(&root))?;
        for e in fs::read_dir(&root).map_err(io(&root))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                let p = e.path();
                tracing::warn!(path = %p.display(), "removing an incomplete model artifact");
                fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pointer file the server watches.
    pub fn champion_path(&self) -> PathBuf {
        self.root.join(CHAMPION_FILE)
    }

    /// Artifact directory of a version.
    pub fn dir_of(&self, version: &str) -> PathBuf {
        self.root.join(version)
    }

    /// Writes the artifact completely, then makes it visible in one rename.
    pub fn register(&self, card: &ModelCard, weights: &[u8]) -> Result<PathBuf, TrainError> {
        let dest = self.dir_of(&card.model_version);
        if dest.exists() {
            return Err(TrainError::VersionExists(card.model_version.clone()));
        }
        let staging = self
            .root
            .join(format!("{STAGING_PREFIX}{}", card.model_version));
        fs::create_dir_all(&staging).map_err(io(&staging))?;
        write_synced(&staging.join(WEIGHTS_FILE), weights)?;
        let json = serde_json::to_vec_pretty(card).map_err(|e| TrainError::Card(e.to_string()))?;
        write_synced(&staging.join(CARD_FILE), &json)?;
        sync_dir(&staging)?;
        fs::rename(&staging, &dest).map_err(io(&dest))?;
        sync_dir(&self.root)?;
        Ok(dest)
    }

    /// A version's card and verified weights.
    pub fn load(&self, version: &str) -> Result<(ModelCard, Vec<u8>), TrainError> {
        let dir = self.dir_of(version);
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

    fn write_pointer(&self, p: &ChampionPointer) -> Result<(), TrainError> {
        let path = self.champion_path();
        let tmp = self
            .root
            .join(format!(".{CHAMPION_FILE}.tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(p).map_err(|e| TrainError::Card(e.to_string()))?;
        write_synced(&tmp, &json)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.root)
    }

    /// Makes `version` the champion (it must be registered), remembering the one it replaces.
    pub fn set_champion(&self, version: &str) -> Result<ChampionPointer, TrainError> {
        self.load(version)?;
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

/// Reads a champion pointer file (`None` when absent).
pub fn read_pointer(path: &Path) -> Result<Option<ChampionPointer>, TrainError> {
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
