//! Which validators may ask: a metagraph snapshot file (JSON list of `{hotkey, stake,
//! validator_permit}`), re-read by the server's background task whenever its modification time
//! changes, so an operator (or a cron job exporting the chain's metagraph) can update it without
//! a restart. Requests only read the snapshot in memory: no file access on the request path.
//!
//! - A file that cannot be read or is invalid (not JSON, no neurons, a stake that is negative or
//!   not finite) is refused and the **last good snapshot stays in force**, with the error reported
//!   in `/healthz` and `/metrics`.
//! - A snapshot older than `serve.metagraph_max_age_s` (by file modification time) allows nobody:
//!   a dead export job must not leave deregistered validators allowed for ever. `/healthz` says
//!   `degraded` while it is stale.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

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
    /// No snapshot could ever be read (nothing is allowed until one can).
    NoSnapshot(String),
    /// The snapshot is older than the configured maximum age.
    Stale {
        age_s: u64,
        max_s: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotRegistered => write!(f, "hotkey is not in the metagraph"),
            Refusal::NoValidatorPermit => write!(f, "hotkey has no validator permit"),
            Refusal::LowStake { stake, min } => write!(f, "stake {stake} is below {min}"),
            Refusal::NoSnapshot(why) => write!(f, "no metagraph snapshot: {why}"),
            Refusal::Stale { age_s, max_s } => write!(
                f,
                "the metagraph snapshot is {age_s} s old (serve.metagraph_max_age_s = {max_s})"
            ),
        }
    }
}

/// What `/healthz` and `/metrics` report about the allow-list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetagraphStatus {
    /// Neurons in the snapshot in force (0: none).
    pub neurons: usize,
    /// Seconds since the file in force was written.
    pub age_s: Option<f64>,
    /// Past the maximum age: nobody is allowed.
    pub stale: bool,
    /// Why the file on disk was last refused (the last good snapshot stays in force).
    pub error: Option<String>,
}

struct Snapshot {
    neurons: HashMap<String, Neuron>,
    modified: SystemTime,
}

#[derive(Default)]
struct State {
    good: Option<Snapshot>,
    error: Option<String>,
    /// Modification time of the file when last read (good or not).
    seen: Option<SystemTime>,
}

/// The allow-list.
pub struct Metagraph {
    path: PathBuf,
    min_stake: f64,
    max_age: Option<Duration>,
    state: RwLock<State>,
}

fn read(path: &Path) -> Result<Snapshot, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| at(&e))?;
    let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
    let list: Vec<Neuron> = serde_json::from_str(&text).map_err(|e| at(&e))?;
    if list.is_empty() {
        return Err(at(&"no neurons"));
    }
    if let Some(n) = list
        .iter()
        .find(|n| !(n.stake.is_finite() && n.stake >= 0.0))
    {
        return Err(at(&format!(
            "stake {} of {} is not a finite number ≥ 0",
            n.stake, n.hotkey
        )));
    }
    Ok(Snapshot {
        neurons: list.into_iter().map(|n| (n.hotkey.clone(), n)).collect(),
        modified,
    })
}

impl Metagraph {
    /// Loads the snapshot (blocking file read), with no age limit.
    pub fn open(path: &Path, min_stake: f64) -> Self {
        let m = Self {
            path: path.to_path_buf(),
            min_stake,
            max_age: None,
            state: RwLock::new(State::default()),
        };
        m.refresh();
        m
    }

    /// Refuses every validator once the snapshot in force is older than `max_age`.
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age.filter(|d| !d.is_zero());
        self
    }

    /// Re-reads the file when its modification time changed (blocking: call off the async
    /// workers). A bad file keeps the last good snapshot.
    pub fn refresh(&self) {
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let seen = self.state.read().map(|s| s.seen).unwrap_or(None);
        if now.is_some() && now == seen {
            return;
        }
        let r = read(&self.path);
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.seen = now;
        match r {
            Ok(snap) => {
                tracing::info!(neurons = snap.neurons.len(), "metagraph snapshot loaded");
                s.good = Some(snap);
                s.error = None;
            }
            Err(e) => {
                if s.error.as_deref() != Some(e.as_str()) {
                    match &s.good {
                        Some(g) => tracing::error!(
                            "metagraph snapshot refused, keeping the last good one ({} neurons): {e}",
                            g.neurons.len()
                        ),
                        None => tracing::error!(
                            "metagraph snapshot unreadable, every validator is refused: {e}"
                        ),
                    }
                }
                s.error = Some(e);
            }
        }
    }

    fn age(snap: &Snapshot) -> Duration {
        SystemTime::now()
            .duration_since(snap.modified)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether `hotkey` may send requests (memory only).
    pub fn check(&self, hotkey: &str) -> Result<(), Refusal> {
        let s = self
            .state
            .read()
            .map_err(|_| Refusal::NoSnapshot("lock poisoned".into()))?;
        let Some(snap) = &s.good else {
            return Err(Refusal::NoSnapshot(
                s.error.clone().unwrap_or_else(|| "not loaded".into()),
            ));
        };
        if let Some(max) = self.max_age {
            let age = Self::age(snap);
            if age > max {
                return Err(Refusal::Stale {
                    age_s: age.as_secs(),
                    max_s: max.as_secs(),
                });
            }
        }
        let n = snap.neurons.get(hotkey).ok_or(Refusal::NotRegistered)?;
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

    /// The allow-list's state for `/healthz` and `/metrics`.
    pub fn status(&self) -> MetagraphStatus {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let age = s.good.as_ref().map(Self::age);
        MetagraphStatus {
            neurons: s.good.as_ref().map_or(0, |g| g.neurons.len()),
            age_s: age.map(|a| a.as_secs_f64()),
            stale: s.good.is_none() || matches!((age, self.max_age), (Some(a), Some(m)) if a > m),
            error: s.error.clone(),
        }
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
        // Requests read memory only: the change shows after the background refresh.
        assert_eq!(m.check("A"), Ok(()));
        m.refresh();
        assert_eq!(m.check("D"), Ok(()));
        assert_eq!(m.check("A"), Err(Refusal::NotRegistered));
        // A corrupt, an empty or a NaN-stake file keeps the last good snapshot, and says why.
        for bad in [
            "not json",
            "[]",
            r#"[{"hotkey":"E","stake":-1,"validator_permit":true}]"#,
        ] {
            std::fs::write(&p, bad).unwrap();
            let t = SystemTime::now() + std::time::Duration::from_secs(10 + bad.len() as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            m.refresh();
            assert_eq!(m.check("D"), Ok(()), "{bad}");
            let st = m.status();
            assert!(st.error.is_some() && st.neurons == 1 && !st.stale, "{st:?}");
        }
        // Never a good one: nobody is allowed.
        let none = Metagraph::open(&dir.path().join("missing.json"), 1000.0);
        assert!(matches!(none.check("D"), Err(Refusal::NoSnapshot(_))));
        assert!(none.status().stale);
    }

    #[test]
    fn a_snapshot_past_its_maximum_age_allows_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metagraph.json");
        std::fs::write(
            &p,
            r#"[{"hotkey":"A","stake":5000,"validator_permit":true}]"#,
        )
        .unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let m = Metagraph::open(&p, 1000.0).with_max_age(Some(Duration::from_secs(3600)));
        assert!(matches!(
            m.check("A"),
            Err(Refusal::Stale { max_s: 3600, .. })
        ));
        assert!(m.status().stale);
        let fresh = Metagraph::open(&p, 1000.0).with_max_age(Some(Duration::from_secs(3 * 3600)));
        assert_eq!(fresh.check("A"), Ok(()));
    }
}
