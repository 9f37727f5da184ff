//! Labels out and in: a selection leaves the store as files a person (or Label Studio) can label,
//! and the filled sheet, a JSONL file or Label Studio's JSON export comes back as `human` labels.
//! The VLM teacher (`teach`) writes `teacher` labels through the same validated path.
//!
//! Invariants: an import is all or nothing (one bad row writes nothing and every bad row is
//! listed), and re-importing the same file writes nothing (labels are keyed by sample, source
//! and author; an unchanged opinion is not rewritten).

mod export;
mod import;
pub mod teach;

pub use export::{
    ExportOptions, ExportSummary, LABEL_STUDIO_CONFIG, LABEL_STUDIO_TASKS, SHEET, export_selection,
};
pub use import::{BadRow, ImportOptions, ImportSummary, import_labels, parse_label_file};
pub use teach::{TeachConfig, TeachSummary, TeachTargets, Teacher};

use std::path::PathBuf;

use crate::store::StoreError;

/// Why labels could not be exported, imported or taught.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no selection named {0:?} in the store (see `roadwork query \"SELECT DISTINCT name FROM selections\"`)"
    )]
    NoSelection(String),
    /// The file as a whole cannot be read as labels (wrong format, missing columns).
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
    /// Rows that cannot be imported; nothing from the file was written.
    #[error("{path}: {} bad row(s), nothing imported:\n{}", rows.len(), list_rows(rows))]
    BadRows { path: PathBuf, rows: Vec<BadRow> },
    #[error("teach: {0}")]
    Teach(String),
}

fn list_rows(rows: &[BadRow]) -> String {
    rows.iter()
        .map(|r| format!("  {}: {}", r.at, r.why))
        .collect::<Vec<_>>()
        .join("\n")
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LabelsError {
    let path = path.to_path_buf();
    move |source| LabelsError::Io { path, source }
}

/// File extension for a stored image format.
fn extension(format: &str) -> &str {
    match format {
        "jpeg" => "jpg",
        "png" | "webp" | "bmp" | "gif" => format,
        _ => "bin",
    }
}
