//! Housekeeping: Lance compaction (small fragments and deleted rows rewritten into fewer files)
//! and removal of old untagged versions. Tagged versions (snapshots: every head's training data)
//! are never removed; Lance keeps them whatever their age.
//!
//! A compaction creates new versions whose rows are the old ones. Each table's report says which
//! version the compaction started from and which it ended at, and whether the row count stayed
//! the same, so the nightly job can treat the two as the same data when it decides whether a
//! stage's inputs changed.

use lancedb::table::{CompactionOptions, Duration, OptimizeAction};
use serde::Serialize;

use super::{Store, StoreError, lance, tables};

/// What housekeeping did to one table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableHousekeeping {
    pub table: String,
    pub version_before: u64,
    pub version_after: u64,
    pub rows_before: usize,
    pub rows_after: usize,
    pub fragments_removed: usize,
    pub fragments_added: usize,
    pub versions_removed: u64,
    pub bytes_removed: u64,
}

impl TableHousekeeping {
    /// True when the table holds the same rows after as before (only files were rewritten), so
    /// `version_after` is the same data as `version_before`.
    pub fn same_data(&self) -> bool {
        self.rows_before == self.rows_after
    }
}

impl Store {
    /// Compacts (when `compact`) and prunes versions older than `keep_days` of every table but
    /// the run ledger's head row, which is rewritten constantly and is tiny.
    pub async fn housekeep(
        &self,
        compact: bool,
        keep_days: u32,
    ) -> Result<Vec<TableHousekeeping>, StoreError> {
        let mut out = Vec::new();
        for name in self.table_names().await? {
            let t = self.table(&name).await?;
            let version_before = t.version().await.map_err(lance("version", &name))?;
            let rows_before = t.count_rows(None).await.map_err(lance("count", &name))?;
            let (mut fr, mut fa) = (0, 0);
            if compact && name != tables::META {
                let s = t
                    .optimize(OptimizeAction::Compact {
                        options: CompactionOptions::default(),
                        remap_options: None,
                    })
                    .await
                    .map_err(lance("compact", &name))?;
                if let Some(c) = s.compaction {
                    (fr, fa) = (c.fragments_removed, c.fragments_added);
                }
            }
            let s = t
                .optimize(OptimizeAction::Prune {
                    older_than: Some(Duration::days(keep_days.into())),
                    delete_unverified: None,
                    error_if_tagged_old_versions: Some(false),
                })
                .await
                .map_err(lance("prune", &name))?;
            let (versions_removed, bytes_removed) = s
                .prune
                .map_or((0, 0), |p| (p.old_versions, p.bytes_removed));
            let t = self.table(&name).await?;
            out.push(TableHousekeeping {
                version_after: t.version().await.map_err(lance("version", &name))?,
                rows_after: t.count_rows(None).await.map_err(lance("count", &name))?,
                table: name,
                version_before,
                rows_before,
                fragments_removed: fr,
                fragments_added: fa,
                versions_removed,
                bytes_removed,
            });
        }
        Ok(out)
    }
}
