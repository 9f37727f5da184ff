//! Which validators may ask: a metagraph snapshot file (JSON list of `{hotkey, stake,
//! validator_permit}`), re-read whenever its modification time changes, so an operator (or a
//! cron job exporting the chain's metagraph) can update it without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use serde::Deserialize;

/// One neuron of the snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct Neuron {
    pub hotkey: String,
    /// Stake in TAO.
    pub stake: f64,
    pub validator_permit: bool,
}

/// Why a hotkey may not ask.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    NotRegistered,
    NoValidatorPermit,
    LowStake {
        stake: f64,
        min: f64,
    },
    /// The snapshot could not be read (nothing is allowed until it can).
    NoSnapshot(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotRegistered => write!(f, "hotkey is not in the metagraph"),
            Refusal::NoValidatorPermit => write!(f, "hotkey has no validator permit"),
            Refusal::LowStake { stake, min } => write!(f, "stake {stake} is below {min}"),
            Refusal::NoSnapshot(why) => write!(f, "no metagraph snapshot: {why}"),
        }
    }
}

struct Loaded {
    modified: Option<SystemTime>,
    neurons: Result<HashMap<String, Neuron>, String>,
}

/// The allow-list.
pub struct Metagraph {
    path: PathBuf,
    min_stake: f64,
    state: RwLock<Loaded>,
}

fn read(path: &Path) -> (Option<SystemTime>, Result<HashMap<String, Neuron>, String>) {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let neurons = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|t| {
            serde_json::from_str::<Vec<Neuron>>(&t).map_err(|e| format!("{}: {e}", path.display()))
        })
        .map(|v| v.into_iter().map(|n| (n.hotkey.clone(), n)).collect());
    (modified, neurons)
}

impl Metagraph {
    pub fn open(path: &Path, min_stake: f64) -> Self {
        let (modified, neurons) = read(path);
        if let Err(e) = &neurons {
            tracing::error!("metagraph snapshot unreadable, every validator is refused: {e}");
        }
        Self {
            path: path.to_path_buf(),
            min_stake,
            state: RwLock::new(Loaded { modified, neurons }),
        }
    }

    /// Re-reads the file when its modification time changed.
    fn refresh(&self) {
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let stale = self.state.read().map(|s| s.modified != now).unwrap_or(true);
        if stale {
            let (modified, neurons) = read(&self.path);
            match &neurons {
                Ok(n) => tracing::info!(neurons = n.len(), "metagraph snapshot reloaded"),
                Err(e) => tracing::error!("metagraph snapshot unreadable: {e}"),
            }
            if let Ok(mut s) = self.state.write() {
                *s = Loaded { modified, neurons };
            }
        }
    }

    /// Whether `hotkey` may send requests.
    pub fn check(&self, hotkey: &str) -> Result<(), Refusal> {
        self.refresh();
        let s = self
            .state
            .read()
            .map_err(|_| Refusal::NoSnapshot("lock poisoned".into()))?;
        let neurons = s
            .neurons
            .as_ref()
            .map_err(|e| Refusal::NoSnapshot(e.clone()))?;
        let n = neurons.get(hotkey).ok_or(Refusal::NotRegistered)?;
        if !n.validator_permit {
            return Err(Refusal::NoValidatorPermit);
        }
        if n.stake.is_nan() || n.stake < self.min_stake {
            return Err(Refusal::LowStake {
                stake: n.stake,
                min: self.min_stake,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_permitted_staked_validators_and_follows_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metagraph.json");
        std::fs::write(
            &p,
            r#"[{"hotkey":"A","stake":5000,"validator_permit":true},
               {"hotkey":"B","stake":5000,"validator_permit":false},
               {"hotkey":"C","stake":10,"validator_permit":true}]"#,
        )
        .unwrap();
        let m = Metagraph::open(&p, 1000.0);
        assert_eq!(m.check("A"), Ok(()));
        assert_eq!(m.check("B"), Err(Refusal::NoValidatorPermit));
        assert!(matches!(m.check("C"), Err(Refusal::LowStake { .. })));
        assert_eq!(m.check("D"), Err(Refusal::NotRegistered));
        // A rewrite is picked up (mtime granularity: make sure it differs).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            &p,
            r#"[{"hotkey":"D","stake":2000,"validator_permit":true}]"#,
        )
        .unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(later).unwrap();
        assert_eq!(m.check("D"), Ok(()));
        assert_eq!(m.check("A"), Err(Refusal::NotRegistered));
        std::fs::write(&p, "not json").unwrap();
        f.set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert!(matches!(m.check("D"), Err(Refusal::NoSnapshot(_))));
    }
}
