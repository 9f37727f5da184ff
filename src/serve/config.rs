//! `[serve]` configuration: who we are on the subnet, who may ask, limits, and the profiles (one
//! port each, all sharing one copy of the encoder and head).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::tier2::Tier2Config;

/// One listening profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Name in logs, metrics and the query log (`speed`, `accuracy`, …).
    pub name: String,
    /// Address to bind; `0.0.0.0` to accept validators from the network.
    #[serde(default = "default_bind")]
    pub bind: String,
    pub port: u16,
    /// This profile's own hotkey (several miners on one machine); default `serve.axon_hotkey`.
    #[serde(default)]
    pub axon_hotkey: Option<String>,
    /// Escalate unsure images to the VLM of `[serve.tier2]` (`accuracy`); off answers with tier 1
    /// alone (`speed`).
    #[serde(default)]
    pub tier2: bool,
}

fn default_bind() -> String {
    "0.0.0.0".into()
}

/// The server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Our hotkey (SS58). Requests signed for another axon are refused; without it
    /// `/ImageSynapse` answers 503 (local `/v1/predict` still works).
    pub axon_hotkey: Option<String>,
    /// Metagraph snapshot (JSON list of `{hotkey, stake, validator_permit}`): the validators that
    /// may ask. An axon profile refuses to start without it unless `allow_any_validator`.
    pub metagraph: Option<PathBuf>,
    /// Answer any hotkey that signs for us when no metagraph is configured. Its traffic is logged
    /// and ingested as source `unverified`, never `validator` (anyone can sign).
    pub allow_any_validator: bool,
    /// Minimum validator stake, TAO.
    pub min_stake: f64,
    /// A metagraph snapshot older than this (file modification time) stops answering validators
    /// (403) until a fresh one arrives; `/healthz` says so. 0 disables the check.
    pub metagraph_max_age_s: u64,
    /// Largest request body, MiB (full-resolution images arrive as several MB of base64).
    pub body_limit_mib: usize,
    /// Answer within this many milliseconds of receipt (the validator times out at 9 s).
    pub deadline_ms: u64,
    /// Requests in flight per profile before answering 503.
    pub max_inflight: usize,
    /// Open connections per profile; more are closed at once.
    pub max_connections: usize,
    /// A connection must send a request's headers within this long (also the idle timeout
    /// between requests of a kept-alive connection), milliseconds.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this long after its headers were accepted.
    pub body_timeout_ms: u64,
    /// `/v1/predict` (no authentication) answers loopback clients only; turn off when the
    /// Python miner calling it runs on another host of a private network.
    pub predict_local_only: bool,
    /// Images that arrive together are encoded in one forward pass of up to this many (1 turns
    /// batching off).
    pub max_batch: usize,
    /// Encoder worker threads (each runs whole batches; 1 suits one GPU or a small CPU).
    pub tier1_workers: usize,
    /// Encoder weights (safetensors); without them the random encoder of `[embed]` is used and
    /// only a head trained on its features will load.
    pub weights: Option<PathBuf>,
    /// Head version to serve; default: the champion, followed as it changes.
    pub model: Option<String>,
    /// How often the champion pointer is checked, milliseconds.
    pub watch_ms: u64,
    /// Query-log directory; default `<data.dir>/querylog`.
    pub querylog_dir: Option<PathBuf>,
    /// A log segment is sealed (ready for Lance) after this many records…
    pub querylog_segment_records: usize,
    /// …or this many seconds.
    pub querylog_segment_s: u64,
    /// How often sealed segments are moved into Lance, seconds.
    pub ingest_every_s: u64,
    /// Below this much free space on the query log's filesystem, MiB, answers are still sent and
    /// logged but without their images (counted in `roadwork_querylog_images_cut`), so a full
    /// disk never stops the axon; 0 turns the floor off.
    pub querylog_min_free_mib: u64,
    /// Bytes kept of a payload that does not decode as an image (what it was, not all of it).
    pub querylog_undecodable_bytes: usize,
    /// Score the registry's challenger (`CHALLENGER.json`) in shadow after each answer and log it
    /// beside the champion's (what `pipeline.min_shadow` counts).
    pub shadow: bool,
    /// Answered images waiting for the challenger at most; more are dropped (and counted).
    pub shadow_queue: usize,
    /// The VLM that profiles with `tier2 = true` escalate to.
    pub tier2: Option<Tier2Config>,
    pub profiles: Vec<ProfileConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            axon_hotkey: None,
            metagraph: None,
            allow_any_validator: false,
            min_stake: 1000.0,
            metagraph_max_age_s: 6 * 3600,
            body_limit_mib: 64,
            deadline_ms: 7000,
            max_inflight: 64,
            max_connections: 512,
            header_timeout_ms: 5000,
            body_timeout_ms: 5000,
            predict_local_only: true,
            max_batch: 16,
            tier1_workers: 1,
            weights: None,
            model: None,
            watch_ms: 1000,
            querylog_dir: None,
            querylog_segment_records: 1000,
            querylog_segment_s: 60,
            ingest_every_s: 30,
            querylog_min_free_mib: 1024,
            querylog_undecodable_bytes: super::querylog::UNDECODABLE_BYTES,
            shadow: true,
            shadow_queue: 256,
            tier2: None,
            profiles: vec![ProfileConfig {
                name: "speed".into(),
                bind: default_bind(),
                port: 8091,
                axon_hotkey: None,
                tier2: false,
            }],
        }
    }
}

impl ServeConfig {
    /// Range checks serde cannot do.
    pub fn validate(&self) -> Result<(), String> {
        if !(32..=1024).contains(&self.body_limit_mib) {
            return Err(
                "serve.body_limit_mib must be in 32..=1024 (full-resolution images arrive as several MB)"
                    .into(),
            );
        }
        if !(self.min_stake.is_finite() && self.min_stake >= 0.0) {
            return Err(format!(
                "serve.min_stake must be a finite number ≥ 0, not {}",
                self.min_stake
            ));
        }
        if self.max_inflight > 100_000
            || self.max_connections == 0
            || self.max_connections > 100_000
        {
            return Err(
                "serve.max_inflight must be ≤ 100000 and serve.max_connections in 1..=100000"
                    .into(),
            );
        }
        if !(100..=60_000).contains(&self.header_timeout_ms)
            || !(100..=60_000).contains(&self.body_timeout_ms)
        {
            return Err(
                "serve.header_timeout_ms and serve.body_timeout_ms must be in 100..=60000".into(),
            );
        }
        if self.max_batch > 4096 || self.tier1_workers > 256 || self.shadow_queue > 1_000_000 {
            return Err(
                "serve.max_batch ≤ 4096, serve.tier1_workers ≤ 256, serve.shadow_queue ≤ 1000000"
                    .into(),
            );
        }
        if self.querylog_min_free_mib > 1 << 24 || self.querylog_undecodable_bytes > 1 << 20 {
            return Err(
                "serve.querylog_min_free_mib ≤ 16777216 and serve.querylog_undecodable_bytes ≤ 1048576"
                    .into(),
            );
        }
        if self.deadline_ms == 0 || self.deadline_ms >= 9000 {
            return Err("serve.deadline_ms must be in 1..9000 (validators time out at 9 s)".into());
        }
        if self.max_inflight == 0 {
            return Err("serve.max_inflight must be at least 1".into());
        }
        if self.max_batch == 0 || self.tier1_workers == 0 {
            return Err("serve.max_batch and serve.tier1_workers must be at least 1".into());
        }
        if self.shadow && self.shadow_queue == 0 {
            return Err(
                "serve.shadow_queue must be at least 1 (or set serve.shadow = false)".into(),
            );
        }
        if self.profiles.is_empty() {
            return Err("serve.profiles needs at least one profile".into());
        }
        if let Some(t2) = &self.tier2 {
            t2.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.profiles {
            if p.tier2 && self.tier2.is_none() {
                return Err(format!(
                    "profile {} escalates to tier 2 but [serve.tier2] is not configured",
                    p.name
                ));
            }
            // Port 0 asks the system for a free port, so it never collides.
            if p.port != 0 && !seen.insert((p.bind.clone(), p.port)) {
                return Err(format!("two profiles listen on {}:{}", p.bind, p.port));
            }
        }
        for h in self
            .profiles
            .iter()
            .filter_map(|p| p.axon_hotkey.as_ref())
            .chain(self.axon_hotkey.as_ref())
        {
            super::auth::ss58_public_key(h).map_err(|e| format!("serve axon_hotkey: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cascade_profile_parses_from_toml() {
        let c: ServeConfig = toml::from_str(
            "max_batch = 8\n[tier2]\nurl = \"http://10.0.0.2:8000/v1\"\nlow = 0.3\nhigh = 0.7\n\
             [[profiles]]\nname = \"speed\"\nport = 8091\n\
             [[profiles]]\nname = \"accuracy\"\nport = 8092\ntier2 = true\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        let t2 = c.tier2.as_ref().unwrap();
        assert_eq!((t2.low, t2.high, t2.weight), (0.3, 0.7, 0.7));
        assert_eq!(c.max_batch, 8);
        assert!(!c.profiles[0].tier2 && c.profiles[1].tier2);
        assert!(toml::from_str::<ServeConfig>("[tier2]\nlowe = 0.1\n").is_err());
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        assert!(ServeConfig::default().validate().is_ok());
        let bad = [
            ServeConfig {
                deadline_ms: 9000,
                ..Default::default()
            },
            ServeConfig {
                body_limit_mib: 8,
                ..Default::default()
            },
            ServeConfig {
                max_inflight: 0,
                ..Default::default()
            },
            ServeConfig {
                profiles: vec![],
                ..Default::default()
            },
            ServeConfig {
                shadow_queue: 0,
                ..Default::default()
            },
            ServeConfig {
                min_stake: f64::NAN,
                ..Default::default()
            },
            ServeConfig {
                min_stake: -1.0,
                ..Default::default()
            },
            ServeConfig {
                body_limit_mib: usize::MAX >> 10,
                ..Default::default()
            },
            ServeConfig {
                header_timeout_ms: 0,
                ..Default::default()
            },
            ServeConfig {
                querylog_min_free_mib: u64::MAX,
                ..Default::default()
            },
            ServeConfig {
                querylog_undecodable_bytes: 64 << 20,
                ..Default::default()
            },
            ServeConfig {
                axon_hotkey: Some("5Fnot-an-address".into()),
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let mut orphan = ServeConfig::default();
        orphan.profiles[0].tier2 = true;
        assert!(orphan.validate().unwrap_err().contains("[serve.tier2]"));
        orphan.tier2 = Some(Tier2Config::default());
        assert!(orphan.validate().is_ok());
        let mut twice = ServeConfig::default();
        twice.profiles.push(twice.profiles[0].clone());
        assert!(twice.validate().unwrap_err().contains("two profiles"));
    }
}
