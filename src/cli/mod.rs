//! Subcommand handlers too large for `main.rs`, one file per stage.

pub mod export;
pub mod labels;
pub mod mine;
pub mod synth;
pub mod train;

/// What `roadwork store info --json` prints: the store as a reader sees it.
#[derive(Debug, serde::Serialize)]
pub struct StoreInfo {
    pub uri: String,
    pub layout_version: u32,
    pub tables: Vec<TableInfo>,
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, serde::Serialize)]
pub struct TableInfo {
    pub name: String,
    pub rows: usize,
    pub version: u64,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, serde::Serialize)]
pub struct ColumnInfo {
    pub name: String,
    /// Arrow's spelling of the type (`Utf8`, `FixedSizeList(384 x Float32)`, …).
    pub r#type: String,
    pub nullable: bool,
    /// For a fixed-size list (a vector column): its length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_size: Option<i32>,
}

#[derive(Debug, serde::Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub versions: std::collections::BTreeMap<String, u64>,
}

/// Every table's rows, version and columns, and the snapshots.
pub async fn store_info(store: &roadwork::store::Store) -> anyhow::Result<StoreInfo> {
    let mut tables = Vec::new();
    for (name, version) in store.versions().await? {
        let rows = store.count_rows(&name, None).await?;
        let schema = store.table_schema(&name).await?;
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                r#type: f.data_type().to_string(),
                nullable: f.is_nullable(),
                list_size: match f.data_type() {
                    arrow_schema::DataType::FixedSizeList(_, n) => Some(*n),
                    _ => None,
                },
            })
            .collect();
        tables.push(TableInfo {
            name,
            rows,
            version,
            columns,
        });
    }
    let snapshots = store
        .snapshots()
        .await?
        .into_iter()
        .map(|s| SnapshotInfo {
            name: s.name.to_string(),
            versions: s.versions,
        })
        .collect();
    Ok(StoreInfo {
        uri: store.uri().to_string(),
        layout_version: roadwork::store::SCHEMA_VERSION,
        tables,
        snapshots,
    })
}
