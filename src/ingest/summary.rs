//! The result of one ingest run: what came in, what was new, what was skipped and why.

use std::fmt;

use serde::Serialize;

/// One item that was not ingested, and why (in words a person can act on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// File path, `file:row` or `file:line`.
    pub item: String,
    pub reason: String,
}

/// What one ingest run did. Also stored as JSON in the `runs` ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestSummary {
    pub run_id: String,
    /// `folder`, `natix` or `querylog`.
    pub kind: String,
    pub input: String,
    /// Items looked at (files, rows, lines).
    pub scanned: usize,
    /// Items that decoded and were offered to the store.
    pub accepted: usize,
    /// Samples that were not in the store before.
    pub new_samples: u64,
    /// Accepted items whose bytes were already stored (or repeated within the input).
    pub duplicates: usize,
    /// Label rows inserted or changed.
    pub labels_written: u64,
    /// Prediction rows inserted (query logs).
    pub predictions_written: u64,
    /// Challenger shadow scores inserted (query logs).
    #[serde(skip_serializing_if = "is_zero")]
    pub shadow_scores_written: u64,
    /// Lance commits made.
    pub commits: usize,
    pub skipped: Vec<Skipped>,
    pub elapsed_s: f64,
}

impl fmt::Display for IngestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ingest {} of {} (run {})",
            self.kind, self.input, self.run_id
        )?;
        writeln!(
            f,
            "  scanned {}, accepted {}, new samples {}, duplicates {}, labels written {}, predictions {}",
            self.scanned,
            self.accepted,
            self.new_samples,
            self.duplicates,
            self.labels_written,
            self.predictions_written
        )?;
        if self.shadow_scores_written > 0 {
            writeln!(f, "  shadow scores {}", self.shadow_scores_written)?;
        }
        let rate = if self.elapsed_s > 0.0 {
            self.accepted as f64 / self.elapsed_s
        } else {
            0.0
        };
        writeln!(
            f,
            "  {} commits in {:.1} s ({rate:.1} items/s)",
            self.commits, self.elapsed_s
        )?;
        if !self.skipped.is_empty() {
            writeln!(f, "  skipped {}:", self.skipped.len())?;
            for s in &self.skipped {
                writeln!(f, "    {}: {}", s.item, s.reason)?;
            }
        }
        Ok(())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
