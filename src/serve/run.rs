//! `roadwork serve`: loads the encoder once and the champion head, starts one server per profile,
//! and follows the champion pointer: a new champion loads in the background and swaps in
//! atomically; a head that fails to load (or does not fit the encoder) is refused and the old
//! one keeps serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ServeError;
use super::config::ServeConfig;
use super::metagraph::Metagraph;
use super::querylog::QueryLog;
use super::server::{AppState, ConnLimits, router, serve_with_limits};
use super::shadow::Shadow;
use super::tier1::Tier1;
use super::tier2::Tier2;
use crate::embed::{ComputeDevice, Cpu, EmbedConfig, load_encoder};
use crate::imaging::DecodeLimits;
use crate::train::{Registry, TrainedHead};

/// A running server: one listener per profile.
pub struct Running {
    /// `(profile, address)` actually bound (port 0 in the config picks a free one).
    pub addrs: Vec<(String, SocketAddr)>,
    pub tier1: Arc<Tier1>,
    /// The durable log every profile appends to.
    pub querylog: Arc<QueryLog>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and waits for the listeners.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn load_head(registry: &Registry, version: &str) -> Result<TrainedHead<Cpu>, ServeError> {
    let (card, weights) = registry
        .load(version)
        .map_err(|e| ServeError::Head(e.to_string()))?;
    TrainedHead::from_parts(card, &weights, &Default::default())
        .map_err(|e| ServeError::Head(e.to_string()))
}

/// Starts every profile, logging to `querylog_dir`.
pub async fn start(
    cfg: &ServeConfig,
    embed: &EmbedConfig,
    decode: DecodeLimits,
    registry: Registry,
    querylog_dir: &std::path::Path,
) -> Result<Running, ServeError> {
    cfg.validate().map_err(ServeError::Config)?;
    let axon = cfg
        .profiles
        .iter()
        .any(|p| p.axon_hotkey.is_some() || cfg.axon_hotkey.is_some());
    if axon && cfg.metagraph.is_none() {
        if !cfg.allow_any_validator {
            return Err(ServeError::Config(
                "an axon profile needs a validator allow-list: set serve.metagraph (a metagraph \
                 snapshot), or serve.allow_any_validator = true to answer any key that signs \
                 (its traffic is stored as `unverified`)"
                    .into(),
            ));
        }
        tracing::warn!(
            "serve.allow_any_validator: ANY sr25519 key that signs for our hotkey is answered; \
             its traffic is logged and ingested as `unverified`, never as `validator`"
        );
    }
    let querylog = Arc::new(
        QueryLog::open(
            querylog_dir,
            cfg.querylog_segment_records,
            Duration::from_secs(cfg.querylog_segment_s),
        )
        .map_err(|e| ServeError::Config(format!("query log {}: {e}", querylog_dir.display())))?,
    );
    querylog.set_image_limits(
        cfg.querylog_min_free_mib << 20,
        cfg.querylog_undecodable_bytes,
    );
    let version = match &cfg.model {
        Some(v) => v.clone(),
        None => registry
            .champion()
            .map_err(|e| ServeError::Head(e.to_string()))?
            .map(|p| p.version)
            .ok_or_else(|| {
                ServeError::Head(
                    "no champion head: run `roadwork train` and `roadwork models promote` first"
                        .into(),
                )
            })?,
    };
    let (embed2, weights) = (embed.clone(), cfg.weights.clone());
    let embedder = tokio::task::spawn_blocking(move || load_encoder(&embed2, weights.as_deref()))
        .await
        .map_err(|e| ServeError::Head(e.to_string()))?
        .map_err(|e| ServeError::Head(e.to_string()))?;
    if embedder.is_random() {
        tracing::warn!("serving with a RANDOM encoder (no serve.weights): answers carry no signal");
    }
    let head = load_head(&registry, &version)?;
    // Devices that compile kernels per input shape get a fixed ladder of batch sizes.
    let pad = embed.device != ComputeDevice::Cpu;
    let tier1 = Arc::new(Tier1::new(embedder, head, decode)?.with_batching(
        cfg.max_batch,
        cfg.tier1_workers,
        pad,
    ));
    let t1 = tier1.clone();
    let (sizes, secs) = tokio::task::spawn_blocking(move || t1.warm_up())
        .await
        .map_err(|e| ServeError::Head(e.to_string()))?;
    tracing::info!(%version, ?sizes, secs, "tier 1 ready (warmed up)");
    let shadow = if cfg.shadow {
        if let Some(c) = registry.challenger().ok().flatten() {
            install_challenger(&registry, &tier1, Some(&c.version)).await;
        }
        Some(Arc::new(Shadow::start(
            tier1.clone(),
            querylog.clone(),
            cfg.shadow_queue,
        )?))
    } else {
        None
    };
    let metagraph = match &cfg.metagraph {
        Some(p) => {
            let (p, min, max) = (
                p.clone(),
                cfg.min_stake,
                Some(Duration::from_secs(cfg.metagraph_max_age_s)),
            );
            let m = tokio::task::spawn_blocking(move || Metagraph::open(&p, min).with_max_age(max))
                .await
                .map_err(|e| ServeError::Config(e.to_string()))?;
            Some(Arc::new(m))
        }
        None => None,
    };
    let tier2 = match &cfg.tier2 {
        Some(t) if cfg.profiles.iter().any(|p| p.tier2) => {
            let t2 = Tier2::new(t.clone()).map_err(ServeError::Config)?;
            tracing::info!(url = %t.url, model = %t.model, low = t.low, high = t.high, "tier 2 ready");
            Some(Arc::new(t2))
        }
        _ => None,
    };
    let (tx, rx) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for p in &cfg.profiles {
        let state = Arc::new(AppState {
            tier2: tier2.clone().filter(|_| p.tier2),
            axon_hotkey: p.axon_hotkey.clone().or_else(|| cfg.axon_hotkey.clone()),
            metagraph: metagraph.clone(),
            allow_any_validator: cfg.allow_any_validator,
            body_timeout: Duration::from_millis(cfg.body_timeout_ms),
            deadline: Duration::from_millis(cfg.deadline_ms),
            body_limit_bytes: cfg.body_limit_mib << 20,
            max_inflight: cfg.max_inflight,
            predict_local_only: cfg.predict_local_only,
            querylog: Some(querylog.clone()),
            shadow: shadow.clone(),
            ..AppState::new(&p.name, tier1.clone())
        });
        let listener = tokio::net::TcpListener::bind((p.bind.as_str(), p.port))
            .await
            .map_err(|e| ServeError::Bind {
                addr: format!("{}:{}", p.bind, p.port),
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| ServeError::Bind {
            addr: format!("{}:{}", p.bind, p.port),
            source: e,
        })?;
        tracing::info!(profile = %p.name, %addr, "listening");
        addrs.push((p.name.clone(), addr));
        let mut stop = rx.clone();
        let limits = ConnLimits::of(cfg);
        tasks.push(tokio::spawn(async move {
            let app = router(state);
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let r = serve_with_limits(listener, app, stopped, limits).await;
            if let Err(e) = r {
                tracing::error!("server stopped: {e}");
            }
        }));
    }
    if let Some(m) = &metagraph {
        tasks.push(tokio::spawn(refresh_metagraph(
            m.clone(),
            Duration::from_millis(cfg.watch_ms.max(50)),
            rx.clone(),
        )));
    }
    if cfg.model.is_none() || cfg.shadow {
        tasks.push(tokio::spawn(follow_pointers(
            registry,
            tier1.clone(),
            Follow {
                champion: cfg.model.is_none(),
                challenger: cfg.shadow,
            },
            Duration::from_millis(cfg.watch_ms.max(50)),
            rx.clone(),
        )));
    }
    Ok(Running {
        addrs,
        tier1,
        querylog,
        shutdown: tx,
        tasks,
    })
}

/// Re-reads the metagraph file off the async workers, so requests never touch the disk for it.
async fn refresh_metagraph(m: Arc<Metagraph>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = m.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || m.refresh()).await {
            tracing::error!("metagraph refresh failed: {e}");
        }
    }
}

/// Which registry pointers a server follows.
#[derive(Debug, Clone, Copy)]
struct Follow {
    champion: bool,
    challenger: bool,
}

/// Loads the challenger `version` (or removes it with `None`) off the async workers; a head that
/// fails to load or does not fit the encoder is logged and leaves no challenger.
async fn install_challenger(registry: &Registry, tier1: &Arc<Tier1>, version: Option<&str>) {
    let Some(v) = version else {
        if let Some(old) = tier1.challenger() {
            let _ = tier1.set_challenger(None);
            tracing::info!(version = %old.card.model_version, "shadow scoring stopped");
        }
        return;
    };
    let (reg, v2) = (registry.clone(), v.to_string());
    let loaded = tokio::task::spawn_blocking(move || load_head(&reg, &v2)).await;
    let r = match loaded {
        Ok(Ok(head)) => tier1.set_challenger(Some(head)),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ServeError::Head(e.to_string())),
    };
    match r {
        Ok(_) => tracing::info!(version = %v, "scoring the challenger in shadow"),
        Err(e) => {
            tracing::error!("refusing challenger {v}: {e}");
            let _ = tier1.set_challenger(None);
        }
    }
}

/// Polls the champion and challenger pointers (and reacts to SIGHUP at once); loads a new head off
/// the async workers and swaps it in. A failed load is logged and retried only when the pointer
/// changes again.
async fn follow_pointers(
    registry: Registry,
    tier1: Arc<Tier1>,
    follow: Follow,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut challenger_seen: Option<String> =
        tier1.challenger().map(|h| h.card.model_version.clone());
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut refused: Option<String> = None;
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = hup_fut => tracing::info!("SIGHUP: checking the registry pointers"),
            _ = stop.wait_for(|s| *s) => return,
        }
        if follow.challenger {
            match registry.challenger() {
                Ok(c) => {
                    let want = c.map(|c| c.version);
                    if want != challenger_seen {
                        install_challenger(&registry, &tier1, want.as_deref()).await;
                        challenger_seen = want;
                    }
                }
                Err(e) => tracing::warn!("cannot read the challenger pointer: {e}"),
            }
        }
        if !follow.champion {
            continue;
        }
        let Ok(Some(p)) = registry.champion() else {
            continue;
        };
        if p.version == tier1.model_version() || refused.as_deref() == Some(p.version.as_str()) {
            continue;
        }
        let (reg, v) = (registry.clone(), p.version.clone());
        let loaded = tokio::task::spawn_blocking(move || load_head(&reg, &v)).await;
        match loaded {
            Ok(Ok(head)) => match tier1.swap_head(head) {
                Ok(v) => {
                    tracing::info!(version = %v, "hot-loaded the new champion");
                    refused = None;
                }
                Err(e) => {
                    tracing::error!("refusing champion {}: {e}", p.version);
                    refused = Some(p.version);
                }
            },
            Ok(Err(e)) => {
                tracing::error!("refusing champion {}: {e}", p.version);
                refused = Some(p.version);
            }
            Err(e) => tracing::error!("head loader failed: {e}"),
        }
    }
}
