//! `roadwork bench soak`: the real `roadwork serve` process under signed validator traffic at
//! saturation for a bounded time, with the champion hot-swapped every few seconds and one
//! `kill -9` + restart in the middle; then a clean SIGTERM (the final query-log move) and a count
//! of every acknowledged answer in the store. The figure that must be 0 is
//! `acknowledged_missing`: answers a validator received whose prediction row is not in Lance.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde::Serialize;

use super::serve::{street_images_b64, validator_keys, write_allow_list};
use crate::config::Config;
use crate::embed::{DinoV3Size, EmbedConfig, load_encoder};
use crate::mine::quantile;
use crate::serve::{Dendrite, DendriteError, ProfileConfig};
use crate::store::Store;
use crate::train::{Head, HeadConfig, ModelCard, Registry, encode_head};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub model: DinoV3Size,
    pub resolution: u32,
    /// Traffic lasts this long.
    pub seconds: u64,
    /// Validators sending at once (each waits for its answer, then sends again).
    pub concurrency: usize,
    /// The champion changes this often (0: never).
    pub swap_every_s: u64,
    /// The server is killed with SIGKILL this far in, and restarted at once (0: never).
    pub kill_at_s: u64,
    /// Street images sent, WIDTHxHEIGHT.
    pub image_size: (u32, u32),
    /// Kept for inspection instead of removed (`None`: a scratch directory).
    pub work_dir: Option<PathBuf>,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub concurrency: usize,
    /// Requests sent.
    pub sent: u64,
    /// Answered 200 with a valid prediction (in [0,1], or -1).
    pub answered: u64,
    /// Answered 503 (the in-flight limit shed them).
    pub shed: u64,
    /// No connection while the server was down (between the kill and the restart).
    pub refused_while_down: u64,
    /// Anything else: another status, a bad reply, a transport error while the server was up.
    pub failed: u64,
    pub answered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Champion changes made, and head versions seen answering (from the store).
    pub swaps: u64,
    pub versions_answering: usize,
    /// kill -9 → the restarted server's first healthy answer, seconds.
    pub restart_s: Option<f64>,
    /// The final SIGTERM → exit, seconds, and whether it exited 0.
    pub shutdown_s: f64,
    pub clean_exit: bool,
    /// Answers acknowledged to a validator but absent from `predictions` (must be 0).
    pub acknowledged_missing: usize,
    /// Acknowledged answers stored more than once (must be 0).
    pub duplicated: usize,
    /// Prediction rows in the store for this run's traffic.
    pub predictions: usize,
}

/// Why the soak could not run.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("{0}")]
    Setup(String),
    #[error("encoder: {0}")]
    Embed(#[from] crate::embed::EmbedError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

fn setup(e: impl std::fmt::Display) -> SoakError {
    SoakError::Setup(e.to_string())
}

/// A scratch directory removed when dropped (unless the caller named one to keep).
struct Work {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The server child, killed if the benchmark stops early.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `roadwork --config CONFIG serve` (this executable) with its output in `log`.
fn spawn_server(config: &Path, log: &Path) -> Result<Child, SoakError> {
    let exe = std::env::current_exe().map_err(setup)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(setup)?;
    let err = out.try_clone().map_err(setup)?;
    Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(setup)
}

/// Waits until `/healthz` answers 200 (or the child exits, or two minutes pass).
async fn wait_healthy(child: &mut Child, url: &str) -> Result<(), SoakError> {
    let c = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if let Ok(r) = c
            .get(format!("{url}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status() == 200
        {
            return Ok(());
        }
        if let Some(s) = child.try_wait().map_err(setup)? {
            return Err(SoakError::Setup(format!(
                "roadwork serve exited while starting: {s} (see serve.log)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(SoakError::Setup(
        "roadwork serve did not come up in 120 s".into(),
    ))
}

fn free_port() -> Result<u16, SoakError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(setup)?
        .port())
}

/// Counters the clients share.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    shed: AtomicU64,
    refused_while_down: AtomicU64,
    failed: AtomicU64,
    /// (request id, latency ms) of every acknowledged answer.
    answered: Mutex<Vec<(String, f64)>>,
}

/// Runs the soak; returns its report.
pub async fn run(opts: &SoakOptions) -> Result<SoakReport, SoakError> {
    let work = match &opts.work_dir {
        Some(d) => Work {
            dir: d.clone(),
            keep: true,
        },
        None => Work {
            dir: std::env::temp_dir().join(format!(
                "roadwork-soak-{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
            )),
            keep: false,
        },
    };
    std::fs::create_dir_all(&work.dir).map_err(setup)?;
    let mut cfg = Config::default();
    cfg.data.dir = work.dir.join("data");
    cfg.embed = EmbedConfig {
        model: opts.model,
        resolution: opts.resolution,
        ..Default::default()
    };

    // Heads to swap between, for the random encoder the server will build from the same config.
    let embed = cfg.embed.clone();
    let encoder = tokio::task::spawn_blocking(move || load_encoder(&embed, None))
        .await
        .map_err(setup)??;
    let registry = Registry::open(cfg.train.registry_dir(&cfg.data.dir)).map_err(setup)?;
    let hc = HeadConfig {
        hidden: vec![],
        dropout: 0.0,
    };
    let mut versions = Vec::new();
    for k in 0..3u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(k);
        let dim = encoder.dim();
        let head = Head::<crate::embed::Cpu>::init(
            &hc,
            &vec![0.0; dim],
            &vec![1.0; dim],
            &mut rng,
            &Default::default(),
        );
        let weights = encode_head(&head).map_err(setup)?;
        let version = format!("soak-head-{k}");
        let card = ModelCard::untrained(&version, encoder.model_id(), dim, hc.clone(), &weights);
        registry.register(&card, &weights).map_err(setup)?;
        versions.push(version);
    }
    registry.set_champion(&versions[0]).map_err(setup)?;
    drop(encoder);

    // Validators, the allow-list naming them, and the axon they sign for.
    let validators = validator_keys(opts.concurrency.max(1), 9).map_err(setup)?;
    let axon = Dendrite::from_seed([43; 32]).map_err(setup)?;
    let metagraph = work.dir.join("metagraph.json");
    write_allow_list(&metagraph, &validators).map_err(setup)?;
    let port = free_port()?;
    let s = &mut cfg.serve;
    s.axon_hotkey = Some(axon.hotkey().to_string());
    s.metagraph = Some(metagraph);
    s.min_stake = 0.0;
    s.watch_ms = 200;
    s.ingest_every_s = 2;
    s.querylog_segment_records = 200;
    s.querylog_segment_s = 5;
    s.shadow = false;
    s.profiles = vec![ProfileConfig {
        name: "soak".into(),
        bind: "127.0.0.1".into(),
        port,
        axon_hotkey: None,
        tier2: false,
    }];
    cfg.validate().map_err(setup)?;
    let config = work.dir.join("serve.toml");
    std::fs::write(&config, toml::to_string(&cfg).map_err(setup)?).map_err(setup)?;
    let url = format!("http://127.0.0.1:{port}");
    let serve_log = work.dir.join("serve.log");

    let images = Arc::new(street_images_b64(4242, 24, opts.image_size).map_err(setup)?);

    let mut server = Server(Some(spawn_server(&config, &serve_log)?));
    if let Some(c) = server.0.as_mut() {
        wait_healthy(c, &url).await?;
    }
    tracing::info!(%url, "server up; traffic starts");

    let tally = Arc::new(Tally::default());
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + Duration::from_secs(opts.seconds.max(1));
    let mut clients = Vec::new();
    for (k, d) in validators.iter().enumerate() {
        let (d, tally, down, stop, images, url) = (
            d.clone(),
            tally.clone(),
            down.clone(),
            stop.clone(),
            images.clone(),
            url.clone(),
        );
        let axon = axon.hotkey().to_string();
        clients.push(tokio::spawn(async move {
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = d
                    .ask(
                        &url,
                        &axon,
                        &images[i % images.len()],
                        Duration::from_secs(9),
                    )
                    .await;
                match r {
                    Ok(a) if (0.0..=1.0).contains(&a.prediction) || a.prediction == -1.0 => {
                        let ms = t.elapsed().as_secs_f64() * 1000.0;
                        tally
                            .answered
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((a.request_id, ms));
                    }
                    Err(DendriteError::Status { status: 503, .. }) => {
                        tally.shed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(DendriteError::Transport(_)) if down.load(Ordering::Relaxed) => {
                        tally.refused_while_down.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }

    let mut report = SoakReport {
        concurrency: validators.len(),
        ..Default::default()
    };
    let kill_at = (opts.kill_at_s > 0 && opts.kill_at_s < opts.seconds)
        .then(|| start + Duration::from_secs(opts.kill_at_s));
    let mut killed = false;
    let mut next_swap = start + Duration::from_secs(opts.swap_every_s.max(1));
    let mut champion = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        if opts.swap_every_s > 0 && now >= next_swap {
            champion = (champion + 1) % versions.len();
            registry.set_champion(&versions[champion]).map_err(setup)?;
            report.swaps += 1;
            next_swap = now + Duration::from_secs(opts.swap_every_s);
        }
        if !killed && kill_at.is_some_and(|k| now >= k) {
            killed = true;
            down.store(true, Ordering::Relaxed);
            let t = Instant::now();
            if let Some(mut c) = server.0.take() {
                c.kill().map_err(setup)?; // SIGKILL: no drain, no final move
                c.wait().map_err(setup)?;
            }
            tracing::info!("server killed with SIGKILL; restarting");
            let mut c = spawn_server(&config, &serve_log)?;
            wait_healthy(&mut c, &url).await?;
            server.0 = Some(c);
            down.store(false, Ordering::Relaxed);
            report.restart_s = Some(t.elapsed().as_secs_f64());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.map_err(setup)?;
    }
    report.seconds = start.elapsed().as_secs_f64();

    // A clean stop: SIGTERM, the server drains and moves its last segment.
    let t = Instant::now();
    if let Some(mut c) = server.0.take() {
        let pid = libc::pid_t::try_from(c.id()).map_err(setup)?;
        // SAFETY: kill(2) with a pid this process spawned and still waits on.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(setup(std::io::Error::last_os_error()));
        }
        let status = c.wait().map_err(setup)?;
        report.clean_exit = status.success();
    }
    report.shutdown_s = t.elapsed().as_secs_f64();

    let answered = std::mem::take(&mut *tally.answered.lock().unwrap_or_else(|p| p.into_inner()));
    report.sent = tally.sent.load(Ordering::Relaxed);
    report.shed = tally.shed.load(Ordering::Relaxed);
    report.refused_while_down = tally.refused_while_down.load(Ordering::Relaxed);
    report.failed = tally.failed.load(Ordering::Relaxed);
    report.answered = answered.len() as u64;
    report.answered_per_s = answered.len() as f64 / report.seconds.max(1e-9);
    let lat: Vec<f64> = answered.iter().map(|(_, ms)| *ms).collect();
    report.p50_ms = quantile(&lat, 0.5).unwrap_or(f64::NAN);
    report.p99_ms = quantile(&lat, 0.99).unwrap_or(f64::NAN);

    let store = Store::open(&cfg.data.store_uri()).await?;
    let preds = store.predictions().await?;
    let mut rows: HashMap<&str, usize> = HashMap::new();
    let mut seen_versions = HashSet::new();
    for p in &preds {
        *rows.entry(p.request_id.as_str()).or_default() += 1;
        seen_versions.insert(p.model_version.as_str());
    }
    report.predictions = preds.len();
    report.versions_answering = seen_versions.len();
    report.acknowledged_missing = answered
        .iter()
        .filter(|(id, _)| !rows.contains_key(id.as_str()))
        .count();
    report.duplicated = answered
        .iter()
        .filter(|(id, _)| rows.get(id.as_str()).is_some_and(|&n| n > 1))
        .count();
    Ok(report)
}

impl SoakReport {
    /// The report as the Markdown table docs/SERVING.md carries.
    pub fn markdown(&self, opts: &SoakOptions) -> String {
        let restart = self
            .restart_s
            .map_or("no kill".to_string(), |s| format!("{s:.1} s"));
        format!(
            "| seconds | validators | sent | answered | answered/s | shed (503) | refused while down | failed | p50 ms | p99 ms | swaps | versions answering | kill -9 → healthy | SIGTERM → exit | acknowledged but missing | duplicated |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {:.0} | {} | {} | {} | {:.1} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.1} s{} | **{}** | {} |\n\n\
             Model {} at {}², images {}×{}.\n",
            self.seconds,
            self.concurrency,
            self.sent,
            self.answered,
            self.answered_per_s,
            self.shed,
            self.refused_while_down,
            self.failed,
            self.p50_ms,
            self.p99_ms,
            self.swaps,
            self.versions_answering,
            restart,
            self.shutdown_s,
            if self.clean_exit { "" } else { " (not clean)" },
            self.acknowledged_missing,
            self.duplicated,
            opts.model.name(),
            opts.resolution,
            opts.image_size.0,
            opts.image_size.1,
        )
    }

    /// What a person must look at: lost or duplicated answers, or a server that did not stop
    /// cleanly.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.acknowledged_missing > 0 {
            v.push(format!(
                "{} acknowledged answers are not in the store",
                self.acknowledged_missing
            ));
        }
        if self.duplicated > 0 {
            v.push(format!("{} answers are stored twice", self.duplicated));
        }
        if !self.clean_exit {
            v.push("the server did not exit 0 on SIGTERM".into());
        }
        if self.answered == 0 {
            v.push("nothing was answered".into());
        }
        v
    }
}
