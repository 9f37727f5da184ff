//! Configuration: embedded defaults, then an optional TOML file, then command-line overrides.
//! Loading reads the file and validates it; it opens nothing else.

mod pipeline;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::embed::EmbedConfig;
use crate::imaging::DecodeLimits;
pub use crate::ingest::IngestConfig;
use crate::labels::TeachConfig;
use crate::mine::MineConfig;
use crate::serve::ServeConfig;
use crate::train::TrainConfig;
pub use pipeline::{
    HousekeepingConfig, NotifyConfig, PipelineConfig, SelectStageConfig, SourceConfig, SourceKind,
    Stage,
};

/// Everything a run of `roadwork` can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub ingest: IngestConfig,
    pub decode: DecodeLimits,
    pub embed: EmbedConfig,
    pub train: TrainConfig,
    pub mine: MineConfig,
    pub serve: ServeConfig,
    pub teach: TeachConfig,
    pub synth: crate::synth::SynthConfig,
    pub pipeline: PipelineConfig,
}

/// Where things live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Working directory: generated scenes, reports and (unless `store_uri` is set) the store.
    pub dir: PathBuf,
    /// The Lance database: a path or any lancedb URI (`s3://bucket/prefix`). Default `<dir>/store`.
    pub store_uri: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("roadwork-data"),
            store_uri: None,
        }
    }
}

impl DataConfig {
    /// The store URI in force.
    pub fn store_uri(&self) -> String {
        self.store_uri
            .clone()
            .unwrap_or_else(|| self.dir.join("store").to_string_lossy().into_owned())
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Train(String),
    #[error("config: {0}")]
    Ingest(String),
    #[error("config: {0}")]
    Embed(String),
    #[error("config: {0}")]
    Mine(String),
    #[error("config: {0}")]
    Serve(String),
    #[error("config: {0}")]
    Teach(String),
    #[error("config: {0}")]
    Synth(String),
    #[error("config: {0}")]
    Pipeline(String),
    #[error("config value {field} = {value} is out of range: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

impl Config {
    /// Defaults, overlaid with `path` when given; validated.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let cfg = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.into(),
                    source,
                })?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, value: usize, why| {
            Err(ConfigError::Invalid {
                field,
                value: value.to_string(),
                why,
            })
        };
        if self.ingest.batch_rows == 0 {
            return bad("ingest.batch_rows", 0, "must be at least 1");
        }
        if self.ingest.batch_mib == 0 {
            return bad("ingest.batch_mib", 0, "must be at least 1");
        }
        if !(1..=1024).contains(&self.ingest.max_file_mib) {
            return bad(
                "ingest.max_file_mib",
                self.ingest.max_file_mib,
                "must be in 1..=1024",
            );
        }
        if self.embed.resolution == 0 || !self.embed.resolution.is_multiple_of(16) {
            return bad(
                "embed.resolution",
                self.embed.resolution as usize,
                "must be a positive multiple of 16",
            );
        }
        if self.embed.batch_size == 0 {
            return bad("embed.batch_size", 0, "must be at least 1");
        }
        if let Err(why) = self.embed.augment.validate() {
            return Err(ConfigError::Embed(why));
        }
        if let Err(why) = self.train.validate() {
            return Err(ConfigError::Train(why));
        }
        if let Err(why) = self.serve.validate() {
            return Err(ConfigError::Serve(why));
        }
        if let Err(why) = self.mine.validate() {
            return Err(ConfigError::Mine(why.to_string()));
        }
        if let Err(why) = self.teach.validate() {
            return Err(ConfigError::Teach(why));
        }
        if let Err(why) = self.synth.validate() {
            return Err(ConfigError::Synth(why));
        }
        if let Err(why) = self.pipeline.validate() {
            return Err(ConfigError::Pipeline(why));
        }
        if let Err(why) = self.ingest.quality.validate() {
            return Err(ConfigError::Ingest(why));
        }
        if !(16..=65_535).contains(&self.decode.max_side_px) {
            return bad(
                "decode.max_side_px",
                self.decode.max_side_px as usize,
                "must be in 16..=65535",
            );
        }
        if !(256..=1_000_000_000).contains(&self.decode.max_pixels) {
            return bad(
                "decode.max_pixels",
                self.decode.max_pixels as usize,
                "must be in 256..=1000000000",
            );
        }
        if !((1 << 20)..=(16 << 30)).contains(&self.decode.max_alloc_bytes) {
            return bad(
                "decode.max_alloc_bytes",
                self.decode.max_alloc_bytes as usize,
                "must be between 1 MiB and 16 GiB",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[ingest]\nbatch_rows = 7\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.ingest.batch_rows, 7);
        assert_eq!(c.ingest.batch_mib, IngestConfig::default().batch_mib);
        std::fs::write(&p, "[ingest]\nbatch_rowz = 7\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p)),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&p, "[ingest]\nbatch_rows = 0\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p)),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn store_uri_defaults_under_data_dir() {
        let c = Config::default();
        assert!(c.data.store_uri().ends_with("store"));
    }
}
