//! The folder manifest: an optional `manifest.jsonl` beside an image folder that says, per file, what
//! the folder layout cannot: where the image came from, its tags, its label and who gave it. The scene
//! generator writes it; folder ingest reads it.

use serde::{Deserialize, Serialize};

use super::ids::{Label, LabelSource, SampleSource};

/// File name folder ingest looks for at the folder root.
pub const MANIFEST_FILE: &str = "manifest.jsonl";

/// One line of `manifest.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Path relative to the folder root, `/`-separated.
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// Who gave the label (defaults to the folder name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_source: Option<LabelSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SampleSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<String>,
    /// `key=value` tags.
    #[serde(default)]
    pub tags: Vec<String>,
}
