//! Store errors. Each variant names the table or path involved.

/// Something the store could not do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying Lance operation failed (I/O, object store, commit conflict).
    #[error("lance {op} failed on table {table:?}: {source}")]
    Lance {
        op: &'static str,
        table: String,
        #[source]
        source: Box<lancedb::Error>,
    },
    /// A batch could not be built or read back (a bug or a foreign writer).
    #[error("arrow data for table {table:?}: {source}")]
    Arrow {
        table: String,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("cannot create store directory {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The table exists with a layout this version does not understand.
    #[error("table {table:?} does not have the expected schema: {problems}")]
    SchemaMismatch { table: String, problems: String },
    /// Written by a newer roadwork; refusing to misread it.
    #[error("store layout version {found} is newer than this build supports ({supported})")]
    LayoutTooNew { found: u32, supported: u32 },
    #[error("no schema is defined for table {table:?}")]
    UnknownTable { table: String },
    /// A vector that must not be stored (wrong length, NaN or infinity).
    #[error("refusing vector for sample {sample_id} in {table}: {why}")]
    BadVector {
        table: String,
        sample_id: String,
        why: String,
    },
    #[error("bad snapshot name {name:?}: {why}")]
    BadSnapshotName { name: String, why: String },
    #[error("snapshot {name:?} already exists")]
    SnapshotExists { name: String },
    #[error("snapshot {name:?} not found (table {table})")]
    SnapshotNotFound { name: String, table: String },
}
