//! `/metrics` of one profile through `prometheus-client` (OpenMetrics text exposition). Every
//! series carries the profile as a constant label; counters are lock-free, and the values that are
//! read off other state (queue depth, early-exit ratio, the serving head) are set when rendered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency histograms, seconds (the validator waits 9 s; we answer by 7).
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tier {
    tier: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: String,
}

fn latency() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The counters of one profile.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    tier_latency: Family<Tier, Histogram, fn() -> Histogram>,
    answer_latency: Histogram,
    early_exit: Counter,
    answered: Counter,
    early_exit_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    tier2: Family<Outcome, Counter>,
    shadow: Family<Outcome, Counter>,
    undecodable: Counter,
    shed: Counter,
    querylog_errors: Counter,
    querylog_cut: Family<Outcome, Counter>,
    querylog_free: Gauge,
    querylog_below_floor: Gauge,
    queue_depth: Gauge,
    metagraph_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    metagraph_neurons: Gauge,
    metagraph_stale: Gauge,
    model_info: Family<Version, Gauge>,
    /// Requests in flight (the admission counter; exported as `roadwork_queue_depth`).
    pub(super) inflight: AtomicUsize,
}

impl Metrics {
    pub fn new(profile: &str) -> Self {
        let mut m = Self {
            registry: Registry::with_labels(
                [("profile".into(), profile.to_string().into())].into_iter(),
            ),
            requests: Family::default(),
            tier_latency: Family::new_with_constructor(latency),
            answer_latency: latency(),
            early_exit: Counter::default(),
            answered: Counter::default(),
            early_exit_ratio: Gauge::default(),
            tier2: Family::default(),
            shadow: Family::default(),
            undecodable: Counter::default(),
            shed: Counter::default(),
            querylog_errors: Counter::default(),
            querylog_cut: Family::default(),
            querylog_free: Gauge::default(),
            querylog_below_floor: Gauge::default(),
            queue_depth: Gauge::default(),
            metagraph_age: Gauge::default(),
            metagraph_neurons: Gauge::default(),
            metagraph_stale: Gauge::default(),
            model_info: Family::default(),
            inflight: AtomicUsize::new(0),
        };
        let r = &mut m.registry;
        r.register(
            "roadwork_requests",
            "Requests answered, by route and status",
            m.requests.clone(),
        );
        r.register(
            "roadwork_tier_latency_seconds",
            "Latency of each cascade tier",
            m.tier_latency.clone(),
        );
        r.register(
            "roadwork_answer_latency_seconds",
            "Receipt to answer, images only",
            m.answer_latency.clone(),
        );
        r.register(
            "roadwork_early_exit",
            "Images answered by tier 1 alone",
            m.early_exit.clone(),
        );
        r.register(
            "roadwork_early_exit_ratio",
            "Share of answered images that tier 1 decided alone",
            m.early_exit_ratio.clone(),
        );
        r.register(
            "roadwork_tier2",
            "Escalations to tier 2, by outcome",
            m.tier2.clone(),
        );
        r.register(
            "roadwork_shadow",
            "Challenger shadow scores, by outcome (scored, dropped_load, dropped_queue_full, no_features, no_challenger, failed, log_error)",
            m.shadow.clone(),
        );
        r.register(
            "roadwork_undecodable",
            "Images answered -1",
            m.undecodable.clone(),
        );
        r.register(
            "roadwork_tier1_shed",
            "Images answered undecided because tier 1 gave no score in time (deadline, shed unencoded, or failed)",
            m.shed.clone(),
        );
        r.register(
            "roadwork_querylog_errors",
            "Answers whose log append failed",
            m.querylog_errors.clone(),
        );
        r.register(
            "roadwork_querylog_images_cut",
            "Answers logged without all of their image, by reason (undecodable: first bytes kept; disk_floor: none)",
            m.querylog_cut.clone(),
        );
        r.register(
            "roadwork_querylog_free_bytes",
            "Free bytes of the query log's filesystem (-1 before the first look)",
            m.querylog_free.clone(),
        );
        r.register(
            "roadwork_querylog_below_floor",
            "1 while the query log's disk is below serve.querylog_min_free_mib (images are not logged)",
            m.querylog_below_floor.clone(),
        );
        r.register(
            "roadwork_queue_depth",
            "Requests in flight",
            m.queue_depth.clone(),
        );
        r.register(
            "roadwork_metagraph_age_seconds",
            "Age of the metagraph snapshot in force (file modification time)",
            m.metagraph_age.clone(),
        );
        r.register(
            "roadwork_metagraph_neurons",
            "Neurons in the metagraph snapshot in force",
            m.metagraph_neurons.clone(),
        );
        r.register(
            "roadwork_metagraph_stale",
            "1 while the allow-list refuses everyone (past serve.metagraph_max_age_s, or never loaded)",
            m.metagraph_stale.clone(),
        );
        r.register(
            "roadwork_model_info",
            "The head answering tier 1",
            m.model_info.clone(),
        );
        m
    }

    pub(super) fn count(&self, route: &str, status: StatusCode) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.as_u16(),
            })
            .inc();
    }

    pub(super) fn tier1_latency(&self, d: Duration) {
        self.tier_latency
            .get_or_create(&Tier { tier: 1 })
            .observe(d.as_secs_f64());
    }

    pub(super) fn tier2_latency(&self, d: Duration) {
        self.tier_latency
            .get_or_create(&Tier { tier: 2 })
            .observe(d.as_secs_f64());
    }

    pub(super) fn answer_latency(&self, d: Duration) {
        self.answered.inc();
        self.answer_latency.observe(d.as_secs_f64());
    }

    pub(super) fn early_exit(&self) {
        self.early_exit.inc();
    }

    pub(super) fn tier2_outcome(&self, outcome: &'static str) {
        self.tier2.get_or_create(&Outcome { outcome }).inc();
    }

    pub(super) fn shadow_outcome(&self, outcome: &'static str) {
        self.shadow.get_or_create(&Outcome { outcome }).inc();
    }

    /// The shadow counters, for the scorer thread to count what it did with a job.
    pub(super) fn shadow_counts(&self) -> Family<Outcome, Counter> {
        self.shadow.clone()
    }

    pub(super) fn undecodable(&self) {
        self.undecodable.inc();
    }

    pub(super) fn shed(&self) {
        self.shed.inc();
    }

    pub(super) fn querylog_error(&self) {
        self.querylog_errors.inc();
    }

    pub(super) fn querylog_image_cut(&self, reason: &'static str) {
        self.querylog_cut
            .get_or_create(&Outcome { outcome: reason })
            .inc();
    }

    /// The exposition text, with the derived values brought up to date first.
    pub(super) fn render(
        &self,
        model_version: &str,
        metagraph: Option<&super::metagraph::MetagraphStatus>,
        querylog: Option<super::querylog::LogStatus>,
    ) -> Result<String, std::fmt::Error> {
        if let Some(q) = querylog {
            self.querylog_free.set(
                q.free_bytes
                    .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            );
            self.querylog_below_floor.set(i64::from(q.below_floor));
        }
        if let Some(m) = metagraph {
            self.metagraph_age.set(m.age_s.unwrap_or(-1.0));
            self.metagraph_neurons.set(m.neurons as i64);
            self.metagraph_stale.set(i64::from(m.stale));
        }
        let answered = self.answered.get();
        let ratio = if answered == 0 {
            0.0
        } else {
            self.early_exit.get() as f64 / answered as f64
        };
        self.early_exit_ratio.set(ratio);
        self.queue_depth
            .set(self.inflight.load(Ordering::Relaxed) as i64);
        self.model_info.clear();
        self.model_info
            .get_or_create(&Version {
                version: model_version.to_string(),
            })
            .set(1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
