//! `roadwork export`: argument handling and printing; the work is in `roadwork::export`.

use std::path::PathBuf;

use anyhow::Result;
use roadwork::config::Config;
use roadwork::export::{ExportPlan, Images, LabelFilter, Layout, Scope, export};
use roadwork::store::{SnapshotName, Store};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The layout to write.
    #[arg(long, value_enum)]
    layout: Layout,
    /// A new folder to write (never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Parquet only: image bytes as files beside the table, or inline in its `image` column.
    #[arg(long, value_enum, default_value_t = Images::Files)]
    images: Images,
    /// Export the store as this snapshot pinned it (`train/<model>` is a head's training set).
    #[arg(long)]
    snapshot: Option<String>,
    /// Only the samples of this named selection (with their rank and score).
    #[arg(long)]
    selection: Option<String>,
    /// A SQL predicate over `samples` columns.
    #[arg(long = "where")]
    filter: Option<String>,
    /// Only samples with this effective label.
    #[arg(long, value_enum)]
    label: Option<LabelFilter>,
    /// At most this many samples.
    #[arg(long)]
    limit: Option<usize>,
}

pub async fn run(cfg: &Config, a: ExportArgs) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    let plan = ExportPlan {
        layout: a.layout,
        images: a.images,
        scope: Scope {
            snapshot: a.snapshot.as_deref().map(SnapshotName::parse).transpose()?,
            selection: a.selection,
            filter: a.filter,
            label: a.label,
            limit: a.limit,
        },
        out: a.out,
    };
    let s = export(&store, plan).await?;
    println!(
        "exported {} samples ({} labelled, {:.1} MiB of images) as {} to {}",
        s.samples,
        s.labelled,
        s.bytes as f64 / (1 << 20) as f64,
        s.layout,
        s.out.display()
    );
    if let Some(run) = &s.mine_run {
        println!("scores from mining run {run}");
    }
    for (why, n) in &s.left_out {
        println!("left out {n}: {why}");
    }
    Ok(())
}
