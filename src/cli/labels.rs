//! `roadwork labels …`, `roadwork teach` and `roadwork nightly`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use roadwork::config::{Config, Stage};
use roadwork::labels::{
    ExportOptions, ImportOptions, TeachTargets, Teacher, export_selection, import_labels,
};
use roadwork::pipeline::nightly::{CrashAt, NightlyOptions, StageStatus};
use roadwork::store::Store;
use roadwork::store::lock::WriterLock;

#[derive(Subcommand)]
pub enum LabelsCmd {
    /// Writes a selection as files to label: images named by sample id, a sheet to fill
    /// (sample_id,file,label,author) and Label Studio tasks with their labelling config.
    #[command(
        after_help = "Examples:\n  roadwork labels export --selection select-20261201T0300 --out to-label/\n  roadwork labels export --selection night-1 --out /srv/ls/night-1 --image-url-prefix /data/local-files/?d=night-1/images/"
    )]
    Export {
        #[arg(long)]
        selection: String,
        #[arg(long)]
        out: PathBuf,
        /// Prefix of the image URLs in the Label Studio tasks (default: Label Studio local
        /// files, with the document root at the export's parent).
        #[arg(long)]
        image_url_prefix: Option<String>,
        /// Head whose probabilities become pre-annotations (default: the champion).
        #[arg(long)]
        model: Option<String>,
    },
    /// Imports labels as `human` labels: the filled sheet (CSV), JSONL, or a Label Studio
    /// export (JSON, JSON-MIN or CSV). One bad row refuses the whole file; re-importing changes
    /// nothing.
    #[command(
        after_help = "Rows name a sample by sample_id, sha256, or file (an exported file name or a path next to\nthe label file); labels are 1/0 or roadwork/clean; blank labels are skipped.\n\nExamples:\n  roadwork labels import to-label/sheet.csv --author alice\n  roadwork labels import project-3-at-2026-12-01.json\n  roadwork labels import reviewed.jsonl --author review-team"
    )]
    Import {
        file: PathBuf,
        /// Author of rows that name none.
        #[arg(long)]
        author: Option<String>,
    },
}

/// `roadwork labels …`.
pub async fn labels(cfg: Config, cmd: LabelsCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    match cmd {
        LabelsCmd::Export {
            selection,
            out,
            image_url_prefix,
            model,
        } => {
            let model = super::mine::champion(&cfg, model)?;
            let s = export_selection(
                &store,
                &ExportOptions {
                    selection,
                    out,
                    image_url_prefix,
                    model_version: model,
                },
            )
            .await?;
            print!("{s}");
        }
        LabelsCmd::Import { file, author } => {
            let _lock = writer_lock(&cfg, "roadwork labels import")?;
            let s = import_labels(
                &store,
                &file,
                &ImportOptions {
                    author,
                    ..ImportOptions::default()
                },
            )
            .await?;
            print!("{s}");
        }
    }
    Ok(())
}

/// Takes the store's writer lock for a command run by hand.
pub fn writer_lock(cfg: &Config, command: &str) -> Result<WriterLock> {
    let path = WriterLock::path_for(&cfg.data.store_uri(), &cfg.data.dir);
    let l = WriterLock::acquire(&path, command)?;
    if let Some(h) = &l.took_over {
        eprintln!("note: took over the writer lock of {h}, which is gone");
    }
    Ok(l)
}

#[derive(clap::Args)]
pub struct TeachArgs {
    /// Ask about the samples of this selection.
    #[arg(long, conflicts_with = "hard", required_unless_present = "hard")]
    selection: Option<String>,
    /// Ask about the N hardest unlabelled samples of the latest mining run.
    #[arg(long)]
    hard: Option<usize>,
    /// Requests at most (overrides teach.budget).
    #[arg(long)]
    budget: Option<usize>,
}

/// `roadwork teach`.
pub async fn teach(mut cfg: Config, a: TeachArgs) -> Result<()> {
    if let Some(b) = a.budget {
        cfg.teach.budget = b;
    }
    let vlm = cfg
        .serve
        .tier2
        .clone()
        .context("teach asks the VLM of [serve.tier2]; configure it first (docs/CONFIG.md)")?;
    let store = Store::open(&cfg.data.store_uri()).await?;
    let _lock = writer_lock(&cfg, "roadwork teach")?;
    let targets = match (a.selection, a.hard) {
        (Some(s), _) => TeachTargets::Selection(s),
        (None, Some(n)) => TeachTargets::Hard(n),
        (None, None) => anyhow::bail!("name --selection or --hard"),
    };
    let t = Teacher::new(store, vlm, cfg.teach.clone())?;
    print!("{}", t.teach(&targets).await?);
    Ok(())
}

#[derive(clap::Args)]
pub struct NightlyArgs {
    /// The pipeline: a config file with a [pipeline] section (same format as --config, which it
    /// replaces). Without either, the built-in defaults run.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Continue the latest unfinished job from its first unfinished stage.
    #[arg(long)]
    resume: bool,
    /// First stage to run.
    #[arg(long, value_enum)]
    from: Option<Stage>,
    /// Last stage to run.
    #[arg(long, value_enum)]
    until: Option<Stage>,
    /// Print what each stage would read and write; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `roadwork nightly`; the error carries the exit code.
pub async fn nightly(cfg: Config, a: NightlyArgs) -> Result<()> {
    let crash_at = match std::env::var("ROADWORK_CRASH_AT") {
        Ok(v) => Some(
            v.parse::<CrashAt>()
                .map_err(|e| anyhow::anyhow!("ROADWORK_CRASH_AT: {e}"))?,
        ),
        Err(_) => None,
    };
    let opts = NightlyOptions {
        resume: a.resume,
        from: a.from,
        until: a.until,
        dry_run: a.dry_run,
        progress: true,
        crash_at,
    };
    let r = roadwork::pipeline::nightly::run(&cfg, &opts).await?;
    if opts.dry_run {
        println!("dry run: nothing is written");
        for p in &r.plan {
            println!("{:<13} {}", p.stage.as_str(), p.action);
            println!("{:<13}   reads:  {}", "", p.reads.join(", "));
            println!("{:<13}   writes: {}", "", p.writes.join(", "));
        }
        return Ok(());
    }
    print_nightly(&r);
    Ok(())
}

/// The job's stage table and where its report is.
pub fn print_nightly(r: &roadwork::pipeline::nightly::NightlyReport) {
    println!(
        "nightly {}{}",
        r.run_id,
        if r.resumed { " (resumed)" } else { "" }
    );
    for s in &r.progress.stages {
        let status = match s.status {
            StageStatus::Done => "done",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "FAILED",
            StageStatus::Running => "running",
        };
        println!(
            "  {:<13} {:<8} {:>7.1} s  {}",
            s.stage.as_str(),
            status,
            s.secs,
            s.note.as_deref().unwrap_or("")
        );
    }
    print_synth(r);
    println!(
        "champion: {} → {}",
        r.progress.champion_before.as_deref().unwrap_or("none"),
        r.progress.champion_after.as_deref().unwrap_or("none")
    );
    if let Some(p) = &r.progress.report {
        println!("report: {}", p.display());
    }
}

/// The synth stage's gaps with their coverage before → after, when it ran.
fn print_synth(r: &roadwork::pipeline::nightly::NightlyReport) {
    use roadwork::config::Stage;
    let Some(gaps) = r
        .progress
        .output(Stage::Synth, "gaps")
        .and_then(|g| serde_json::from_value::<Vec<roadwork::synth::GapOutcome>>(g.clone()).ok())
    else {
        return;
    };
    let n = |k: &str| {
        r.progress
            .output(Stage::Synth, k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    println!(
        "synth: {} images accepted of {} made ({} roadwork, {} clean)",
        n("accepted"),
        n("sent"),
        n("accepted_roadwork"),
        n("accepted_clean")
    );
    for g in gaps {
        println!("  {:<30} +{:<3} {}", g.gap, g.accepted, g.coverage());
    }
}
