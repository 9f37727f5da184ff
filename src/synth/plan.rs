//! Gaps → requests → jobs: a pure function of one mining run's results, the samples' facts and
//! the config. Nothing is generated here; `synth plan` prints this and what it would cost.
//!
//! Three kinds of gap:
//! - **under-covered** clusters (mining's flag: a far larger share of traffic than of training
//!   data): images in that cluster's style, both labels, to bring its training share towards
//!   its traffic share;
//! - **high-error** clusters (the champion gets many labelled members wrong): more of the class
//!   it gets wrong;
//! - **imbalance** within a stratum (`daytime=night`, `era=crop224`, …): the minority class of
//!   that stratum, until the majority holds at most `max_class_share`.
//!
//! Requests and jobs are named by hashes of (gap kind, what the gap is — a stratum value, or a
//! cluster's most typical real members —, label, seed), so the same plan is the same set of jobs on
//! every re-run, and a later mining run that finds the same gap asks for the same jobs.

use std::collections::{BTreeMap, HashMap};

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{BackendKind, BedrockModel, ModelFamily, PromptConfig, SynthConfig};
use super::scenes::GENERATOR;
use crate::store::{Label, SynthStatus};
use crate::train::Split;

/// What kind of gap a request fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GapKind {
    UnderCovered,
    HighError,
    Imbalance,
}

impl GapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::UnderCovered => "under-covered",
            GapKind::HighError => "high-error",
            GapKind::Imbalance => "imbalance",
        }
    }
}

/// One gap in the data, as mining (or the label counts) showed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    /// `under-covered:c12`, `high-error:c3`, `imbalance:daytime=night`.
    pub key: String,
    pub kind: GapKind,
    pub cluster: Option<u32>,
    /// `(key, value)` of an imbalance gap.
    pub stratum: Option<(String, String)>,
    /// For ordering: larger is more urgent (each kind scaled to about [0, 1]).
    pub strength: f64,
    /// One sentence a person reads.
    pub why: String,
    /// Real members (cluster or stratum) and those in the training split.
    pub members: usize,
    pub train_members: usize,
    /// Synthetic members already there.
    pub synthetic: usize,
}

/// What a job asks the generator to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    TextToImage,
    /// A variation of a real frame that keeps its label.
    ImageToImage,
    /// Paint a roadwork element into a clean real frame: a positive of the same scene.
    AddElement,
    /// Replace the roadwork in a positive real frame by empty road: a hard negative.
    RemoveElement,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::TextToImage => "text-to-image",
            Task::ImageToImage => "image-to-image",
            Task::AddElement => "add-element",
            Task::RemoveElement => "remove-element",
        }
    }
}

/// A real frame a request may start from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceFrame {
    pub sample_id: String,
    pub label: Label,
    pub source_ref: String,
}

/// One gap, one label: `n` images with these attributes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthRequest {
    pub request_id: String,
    pub gap: String,
    pub cluster: Option<u32>,
    pub label: Label,
    pub n: usize,
    /// `daytime=night`, `weather=rain`, … (the members' majority values, or the stratum).
    pub attributes: BTreeMap<String, String>,
    /// Output size: 224² for crop-era gaps, else the members' most common size.
    pub width: u32,
    pub height: u32,
    /// Real training members to start from, typical first.
    pub sources: Vec<SourceFrame>,
}

/// The model a job goes to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobModel {
    pub id: String,
    pub family: Option<ModelFamily>,
    pub price_usd: f64,
}

/// One image to make.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub synth_id: String,
    pub request_id: String,
    pub gap: String,
    pub cluster: Option<u32>,
    pub index: usize,
    pub label: Label,
    pub task: Task,
    pub model: JobModel,
    pub prompt: String,
    pub negative_prompt: String,
    /// Search-and-replace: what to find.
    pub search_prompt: Option<String>,
    /// In 1..=4294967294 (0 means "random" to Stability).
    pub seed: u32,
    pub source: Option<SourceFrame>,
    pub attributes: BTreeMap<String, String>,
    pub width: u32,
    pub height: u32,
}

/// What the plan would cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cost {
    pub images: usize,
    pub usd: f64,
    /// `(model id → (images, dollars))`.
    pub by_model: BTreeMap<String, (usize, f64)>,
}

/// The plan of one synthesis run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub mine_run: String,
    pub embedding_model: String,
    pub backend: BackendKind,
    pub seed: u64,
    pub gaps: Vec<Gap>,
    pub requests: Vec<SynthRequest>,
    /// Jobs to send, in send order (interleaved across requests), within the budget.
    pub jobs: Vec<Job>,
    /// Jobs an earlier run already finished (skipped; they cost nothing again).
    pub already_done: usize,
    /// Jobs left out by `max_images` / `max_usd`.
    pub over_budget: usize,
    pub cost: Cost,
    /// Things a person should know (a gap capped to nothing, no sources for edits, …).
    pub notes: Vec<String>,
}

/// One mining-run member with what the store knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub sample_id: String,
    pub cluster: u32,
    pub source: String,
    pub source_ref: String,
    pub era: String,
    pub tags: Vec<String>,
    pub width: u32,
    pub height: u32,
    pub label: Option<Label>,
    pub split: Split,
    /// The champion's probability (mining's `prob`), when a head scored it.
    pub prob: Option<f32>,
    /// Distance to its cluster centroid (typical members first as sources).
    pub centroid_distance: f32,
}

impl Member {
    fn synthetic(&self) -> bool {
        self.source == "synthetic"
    }

    /// The value of tag `key` (or the era for `era`).
    pub fn attr(&self, key: &str) -> Option<&str> {
        if key == "era" {
            return Some(self.era.as_str());
        }
        self.tags
            .iter()
            .find_map(|t| t.split_once('=').and_then(|(k, v)| (k == key).then_some(v)))
    }
}

/// One cluster of the mining run (the columns synthesis reads).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterFacts {
    pub cluster: u32,
    pub size: u32,
    pub under_covered: bool,
    pub error_rate: Option<f32>,
    pub n_labelled: u32,
    pub train_share: f32,
    pub traffic_share: f32,
    pub drift_ratio: f32,
}

/// Everything the plan is a function of.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    pub mine_run: String,
    pub embedding_model: String,
    pub clusters: Vec<ClusterFacts>,
    pub members: Vec<Member>,
    /// Outcomes recorded by earlier runs, by job id.
    pub done: HashMap<String, SynthStatus>,
}

fn hex_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

fn rng_of(id: &str) -> ChaCha8Rng {
    let mut s = [0u8; 32];
    let d = Sha256::digest(id.as_bytes());
    s.copy_from_slice(&d);
    ChaCha8Rng::from_seed(s)
}

/// The majority value of `key` among `members`, when at least half share it.
fn majority<'a>(members: &[&'a Member], key: &str) -> Option<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in members {
        if let Some(v) = m.attr(key) {
            *counts.entry(v).or_default() += 1;
        }
    }
    let (v, c) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))?;
    (2 * c >= members.len()).then_some(v)
}

/// Size of images for these members: 224² for the crop eras, else the most common size.
fn output_size(members: &[&Member]) -> (u32, u32) {
    if let Some("crop224" | "letterbox224") = majority(members, "era") {
        return (224, 224);
    }
    let mut counts: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for m in members {
        *counts.entry((m.width, m.height)).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(s, _)| s)
        .unwrap_or((1024, 576))
}

fn attributes(members: &[&Member], keys: &[String]) -> BTreeMap<String, String> {
    keys.iter()
        .filter(|k| k.as_str() != "era")
        .filter_map(|k| majority(members, k).map(|v| (k.clone(), v.to_string())))
        .collect()
}

/// Real, labelled training members, typical first: what edits and variations start from.
fn sources(members: &[&Member]) -> Vec<SourceFrame> {
    let mut v: Vec<&&Member> = members
        .iter()
        .filter(|m| !m.synthetic() && m.split == Split::Train && m.label.is_some())
        .collect();
    v.sort_by(|a, b| {
        a.centroid_distance
            .total_cmp(&b.centroid_distance)
            .then_with(|| a.sample_id.cmp(&b.sample_id))
    });
    v.into_iter()
        .take(16)
        .filter_map(|m| {
            Some(SourceFrame {
                sample_id: m.sample_id.clone(),
                label: m.label?,
                source_ref: m.source_ref.clone(),
            })
        })
        .collect()
}

/// Finds the gaps of one mining run, strongest first.
pub fn find_gaps(cfg: &SynthConfig, inp: &PlanInputs) -> Vec<Gap> {
    let g = &cfg.gaps;
    let by_cluster: HashMap<u32, Vec<&Member>> =
        inp.members.iter().fold(HashMap::new(), |mut m, x| {
            m.entry(x.cluster).or_default().push(x);
            m
        });
    let empty = Vec::new();
    let mut gaps = Vec::new();
    for c in &inp.clusters {
        let members = by_cluster.get(&c.cluster).unwrap_or(&empty);
        let real = members.iter().filter(|m| !m.synthetic()).count();
        let train = members
            .iter()
            .filter(|m| m.split == Split::Train && m.label.is_some())
            .count();
        let synthetic = members.len() - real;
        let gap = |kind: GapKind, strength: f64, why: String| Gap {
            key: format!("{}:c{}", kind.as_str(), c.cluster),
            kind,
            cluster: Some(c.cluster),
            stratum: None,
            strength,
            why,
            members: real,
            train_members: train,
            synthetic,
        };
        if g.under_covered && c.under_covered {
            let cover = if c.traffic_share > 0.0 {
                (1.0 - c.train_share / c.traffic_share).clamp(0.0, 1.0)
            } else {
                0.0
            };
            gaps.push(gap(
                GapKind::UnderCovered,
                f64::from(cover),
                format!(
                    "cluster {} holds {:.1}% of traffic but {:.1}% of training data",
                    c.cluster,
                    100.0 * c.traffic_share,
                    100.0 * c.train_share
                ),
            ));
        }
        if let Some(e) = c.error_rate
            && c.n_labelled >= g.min_labelled
            && e >= g.min_error_rate
        {
            gaps.push(gap(
                GapKind::HighError,
                f64::from(e),
                format!(
                    "the champion gets {:.0}% of cluster {}'s {} labelled members wrong",
                    100.0 * e,
                    c.cluster,
                    c.n_labelled
                ),
            ));
        }
    }
    for key in &g.strata {
        let mut by_value: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for m in &inp.members {
            if m.split != Split::Train {
                continue;
            }
            let (Some(v), Some(l)) = (m.attr(key), m.label) else {
                continue;
            };
            let e = by_value.entry(v).or_default();
            match l {
                Label::Roadwork => e.0 += 1,
                Label::Clean => e.1 += 1,
            }
            e.2 += usize::from(m.synthetic());
        }
        for (value, (pos, neg, synthetic)) in by_value {
            let n = pos + neg;
            if n < g.min_stratum || value == "unknown" {
                continue;
            }
            let share = pos as f64 / n as f64;
            let major = share.max(1.0 - share);
            if major <= g.max_class_share {
                continue;
            }
            gaps.push(Gap {
                key: format!("imbalance:{key}={value}"),
                kind: GapKind::Imbalance,
                cluster: None,
                stratum: Some((key.clone(), value.to_string())),
                strength: 2.0 * (major - 0.5),
                why: format!(
                    "{key}={value}: {pos} roadwork vs {neg} clean labelled training samples"
                ),
                members: n - synthetic,
                train_members: n,
                synthetic,
            });
        }
    }
    gaps.sort_by(|a, b| {
        b.strength
            .total_cmp(&a.strength)
            .then_with(|| a.key.cmp(&b.key))
    });
    gaps
}

/// How many of each label a gap asks for (before the per-gap and per-cluster caps).
fn wanted(
    cfg: &SynthConfig,
    inp: &PlanInputs,
    gap: &Gap,
    members: &[&Member],
) -> Vec<(Label, usize)> {
    let count = |l: Label| {
        members
            .iter()
            .filter(|m| m.split == Split::Train && m.label == Some(l))
            .count()
    };
    let (pos, neg) = (count(Label::Roadwork), count(Label::Clean));
    match gap.kind {
        GapKind::UnderCovered => {
            let c = gap
                .cluster
                .and_then(|c| inp.clusters.iter().find(|x| x.cluster == c));
            let train_total = inp
                .members
                .iter()
                .filter(|m| m.split == Split::Train && m.label.is_some())
                .count();
            let target = c.map_or(0.0, |c| f64::from(c.traffic_share) * train_total as f64);
            let need = (target.round() as usize)
                .saturating_sub(gap.train_members)
                .max(2);
            // Both classes in the cluster's style, the rarer one first.
            let (first, second) = if pos <= neg {
                (Label::Roadwork, Label::Clean)
            } else {
                (Label::Clean, Label::Roadwork)
            };
            vec![(first, need.div_ceil(2)), (second, need / 2)]
        }
        GapKind::HighError => {
            let wrong = |l: Label| {
                members
                    .iter()
                    .filter(|m| {
                        m.label == Some(l)
                            && m.prob
                                .is_some_and(|p| (f64::from(p) >= 0.5) != (l == Label::Roadwork))
                    })
                    .count()
            };
            let (wp, wn) = (wrong(Label::Roadwork), wrong(Label::Clean));
            let label = if wp > wn || (wp == wn && pos <= neg) {
                Label::Roadwork
            } else {
                Label::Clean
            };
            vec![(label, (2 * wp.max(wn)).max(2))]
        }
        GapKind::Imbalance => {
            let (minor, major, label) = if pos < neg {
                (pos, neg, Label::Roadwork)
            } else {
                (neg, pos, Label::Clean)
            };
            let s = cfg.gaps.max_class_share;
            let need = (major as f64 / s - (major + minor) as f64).ceil().max(1.0) as usize;
            vec![(label, need)]
        }
    }
}

/// The tasks a request can use, strongest first, given the backend and its sources.
fn tasks(cfg: &SynthConfig, label: Label, sources: &[SourceFrame]) -> Vec<Task> {
    let has = |l: Label| sources.iter().any(|s| s.label == l);
    let procedural_source = |l: Label| {
        sources
            .iter()
            .any(|s| s.label == l && s.source_ref.starts_with(&format!("{GENERATOR}:seed=")))
    };
    let mut t = Vec::new();
    match cfg.backend {
        BackendKind::Procedural => {
            // The procedural generator can redraw its own scenes with the other label: the same
            // street with the roadwork added or taken away.
            match label {
                Label::Roadwork if procedural_source(Label::Clean) => t.push(Task::AddElement),
                Label::Clean if procedural_source(Label::Roadwork) => t.push(Task::RemoveElement),
                _ => {}
            }
        }
        BackendKind::Bedrock => {
            let b = &cfg.bedrock;
            match label {
                Label::Roadwork if b.add_element.is_some() && has(Label::Clean) => {
                    t.push(Task::AddElement)
                }
                Label::Clean if b.remove_element.is_some() && has(Label::Roadwork) => {
                    t.push(Task::RemoveElement)
                }
                _ => {}
            }
            if b.image_to_image.is_some() && has(label) {
                t.push(Task::ImageToImage);
            }
        }
    }
    t.push(Task::TextToImage);
    t
}

fn fill(template: &str, view: &str, scene: &str, element: &str, lookalike: &str) -> String {
    template
        .replace("{view}", view)
        .replace("{scene}", scene)
        .replace("{element}", element)
        .replace("{lookalike}", lookalike)
}

/// The scene phrase of a request's attributes: environment, then daytime, then weather.
pub fn scene_phrase(p: &PromptConfig, attrs: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    let order = ["environment", "daytime", "weather"];
    let mut keys: Vec<&String> = attrs.keys().collect();
    keys.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(order.len()));
    for k in keys {
        let v = &attrs[k];
        if k == "element" || k == "hard_negative" || k == "camera_height_m" {
            continue;
        }
        let phrase = p
            .phrases
            .get(k.as_str())
            .and_then(|m| m.get(v.as_str()))
            .cloned()
            .unwrap_or_else(|| v.replace('_', " "));
        parts.push(phrase);
    }
    if parts.is_empty() {
        "a street".into()
    } else {
        parts.join(", ")
    }
}

/// Prompts of one job: deterministic in its id.
fn prompts(
    p: &PromptConfig,
    task: Task,
    label: Label,
    attrs: &BTreeMap<String, String>,
    rng: &mut ChaCha8Rng,
) -> (String, Option<String>) {
    let pick = |v: &[String], r: &mut ChaCha8Rng| v.choose(r).cloned().unwrap_or_default();
    let view = pick(&p.views, rng);
    let element = pick(&p.elements, rng);
    let lookalike = pick(&p.lookalikes, rng);
    let scene = scene_phrase(p, attrs);
    match task {
        Task::TextToImage | Task::ImageToImage => {
            let t = match label {
                Label::Roadwork => &p.positive,
                Label::Clean => &p.negative,
            };
            (fill(t, &view, &scene, &element, &lookalike), None)
        }
        Task::AddElement => (
            fill(&p.add_prompt, &view, &scene, &element, &lookalike),
            Some(p.add_search.clone()),
        ),
        Task::RemoveElement => (
            fill(&p.remove_prompt, &view, &scene, &element, &lookalike),
            Some(p.remove_search.clone()),
        ),
    }
}

fn job_model(cfg: &SynthConfig, task: Task) -> Option<(JobModel, Option<&BedrockModel>)> {
    match cfg.backend {
        BackendKind::Procedural => Some((
            JobModel {
                id: GENERATOR.into(),
                family: None,
                price_usd: 0.0,
            },
            None,
        )),
        BackendKind::Bedrock => {
            let b = &cfg.bedrock;
            let name = match task {
                Task::TextToImage => b.text_to_image.as_ref(),
                Task::ImageToImage => b.image_to_image.as_ref(),
                Task::AddElement => b.add_element.as_ref(),
                Task::RemoveElement => b.remove_element.as_ref(),
            }?;
            let m = b.model(name)?;
            Some((
                JobModel {
                    id: m.id.clone(),
                    family: Some(m.family),
                    price_usd: m.price_usd,
                },
                Some(m),
            ))
        }
    }
}

/// Dollars as integer micro-dollars, so budgets add up exactly.
pub fn micro_usd(usd: f64) -> u64 {
    (usd * 1e6).round().max(0.0) as u64
}

/// The plan: gaps, requests (capped per gap and per cluster), jobs interleaved across requests
/// and cut at the budget.
pub fn make_plan(cfg: &SynthConfig, inp: &PlanInputs) -> Plan {
    let gaps = find_gaps(cfg, inp);
    let mut notes = Vec::new();
    let mut requests = Vec::new();
    let strata_keys = &cfg.gaps.strata;
    for gap in gaps.iter().take(cfg.max_gaps) {
        let members: Vec<&Member> = match (&gap.cluster, &gap.stratum) {
            (Some(c), _) => inp.members.iter().filter(|m| m.cluster == *c).collect(),
            (None, Some((k, v))) => inp
                .members
                .iter()
                .filter(|m| m.attr(k) == Some(v.as_str()))
                .collect(),
            _ => Vec::new(),
        };
        let mut attrs = attributes(&members, strata_keys);
        if let Some((k, v)) = &gap.stratum
            && k != "era"
        {
            attrs.insert(k.clone(), v.clone());
        }
        let (width, height) = output_size(&members);
        let srcs = sources(&members);
        // What the gap is, independent of the mining run that found it: a stratum by its value,
        // a cluster by its most typical real members. A later mining run that finds the same gap
        // asks for the same jobs, which are then already done.
        let anchor = match &gap.stratum {
            Some((k, v)) => format!("{k}={v}"),
            None => {
                let mut typical: Vec<&&Member> =
                    members.iter().filter(|m| !m.synthetic()).collect();
                typical.sort_by(|a, b| {
                    a.centroid_distance
                        .total_cmp(&b.centroid_distance)
                        .then_with(|| a.sample_id.cmp(&b.sample_id))
                });
                let mut ids: Vec<&str> = typical
                    .iter()
                    .take(8)
                    .map(|m| m.sample_id.as_str())
                    .collect();
                ids.sort_unstable();
                ids.join(",")
            }
        };
        let mut room = cfg.per_gap;
        if gap.cluster.is_some() {
            let cap = (cfg.checks.max_synthetic_ratio * gap.members as f32).floor() as usize;
            let left = cap.saturating_sub(gap.synthetic);
            if left < room {
                notes.push(format!(
                    "{}: capped at {left} images (synthetic ≤ {:.0}% of the {} real members)",
                    gap.key,
                    100.0 * cfg.checks.max_synthetic_ratio,
                    gap.members
                ));
                room = left;
            }
        }
        for (label, n) in wanted(cfg, inp, gap, &members) {
            let n = n.min(room);
            room -= n;
            if n == 0 {
                continue;
            }
            let request_id = hex_hash(&[
                "synth-request-v2",
                gap.kind.as_str(),
                &anchor,
                label.as_str(),
                &cfg.seed.to_string(),
            ]);
            requests.push(SynthRequest {
                request_id,
                gap: gap.key.clone(),
                cluster: gap.cluster,
                label,
                n,
                attributes: attrs.clone(),
                width,
                height,
                sources: srcs.clone(),
            });
        }
    }
    // Jobs, interleaved: the j-th image of every request before the (j+1)-th of any, so a tight
    // budget still reaches every gap.
    let mut all = Vec::new();
    let longest = requests.iter().map(|r| r.n).max().unwrap_or(0);
    for j in 0..longest {
        for r in requests.iter().filter(|r| j < r.n) {
            let t = tasks(cfg, r.label, &r.sources);
            let task = t[j % t.len()];
            let Some((model, _)) = job_model(cfg, task) else {
                continue;
            };
            let synth_id = hex_hash(&["synth-job-v1", &r.request_id, &j.to_string()]);
            let mut rng = rng_of(&synth_id);
            let (prompt, search_prompt) =
                prompts(&cfg.prompts, task, r.label, &r.attributes, &mut rng);
            let want_source = match task {
                Task::TextToImage => None,
                Task::ImageToImage => Some(r.label),
                Task::AddElement => Some(Label::Clean),
                Task::RemoveElement => Some(Label::Roadwork),
            };
            let source = want_source.and_then(|l| {
                let pool: Vec<&SourceFrame> = r
                    .sources
                    .iter()
                    .filter(|s| {
                        s.label == l
                            && (cfg.backend == BackendKind::Bedrock
                                || s.source_ref.starts_with(&format!("{GENERATOR}:seed=")))
                    })
                    .collect();
                (!pool.is_empty()).then(|| pool[(j / t.len()) % pool.len()].clone())
            });
            all.push(Job {
                synth_id,
                request_id: r.request_id.clone(),
                gap: r.gap.clone(),
                cluster: r.cluster,
                index: j,
                label: r.label,
                task,
                model,
                prompt,
                negative_prompt: cfg.prompts.negative_prompt.clone(),
                search_prompt,
                seed: rng.random_range(1..=4_294_967_294u32),
                source,
                attributes: r.attributes.clone(),
                width: r.width,
                height: r.height,
            });
        }
    }
    let mut already_done = 0;
    let mut jobs = Vec::new();
    let mut cost = Cost::default();
    let mut over_budget = 0;
    let budget = micro_usd(cfg.max_usd);
    let mut spent = 0u64;
    for job in all {
        if inp.done.get(&job.synth_id).is_some_and(|s| s.is_final()) {
            already_done += 1;
            continue;
        }
        let price = micro_usd(job.model.price_usd);
        if jobs.len() >= cfg.max_images || spent + price > budget {
            over_budget += 1;
            continue;
        }
        spent += price;
        cost.images += 1;
        cost.usd += job.model.price_usd;
        let e = cost.by_model.entry(job.model.id.clone()).or_default();
        e.0 += 1;
        e.1 += job.model.price_usd;
        jobs.push(job);
    }
    if gaps.is_empty() {
        notes.push(
            "no gaps: nothing under-covered, no high-error cluster, no imbalanced stratum".into(),
        );
    }
    Plan {
        mine_run: inp.mine_run.clone(),
        embedding_model: inp.embedding_model.clone(),
        backend: cfg.backend,
        seed: cfg.seed,
        gaps,
        requests,
        jobs,
        already_done,
        over_budget,
        cost,
        notes,
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "synth plan ({} backend, mining run {}, seed {}): {} gaps, {} requests, {} images to make, ${:.2}",
            self.backend.as_str(),
            self.mine_run,
            self.seed,
            self.gaps.len(),
            self.requests.len(),
            self.cost.images,
            self.cost.usd
        )?;
        for g in &self.gaps {
            writeln!(
                f,
                "  gap {:<28} strength {:.2}  {}",
                g.key, g.strength, g.why
            )?;
        }
        for r in &self.requests {
            let attrs: Vec<String> = r
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                f,
                "  request {} {:<28} {:>3} × {:<8} {}×{} [{}] {} source frames",
                r.request_id,
                r.gap,
                r.n,
                r.label.as_str(),
                r.width,
                r.height,
                attrs.join(" "),
                r.sources.len()
            )?;
        }
        for (model, (n, usd)) in &self.cost.by_model {
            writeln!(f, "  cost {model}: {n} images, ${usd:.2}")?;
        }
        if self.already_done > 0 {
            writeln!(
                f,
                "  {} images already made by an earlier run (skipped)",
                self.already_done
            )?;
        }
        if self.over_budget > 0 {
            writeln!(f, "  {} images left out by the budget", self.over_budget)?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize, cluster: u32, label: Option<Label>, tags: &[&str]) -> Member {
        Member {
            sample_id: format!("{i:064x}"),
            cluster,
            source: "dataset".into(),
            source_ref: format!("{GENERATOR}:seed=1:index={i}"),
            era: "fullres".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            width: 640,
            height: 480,
            label,
            split: Split::Train,
            prob: label.map(|l| if l == Label::Roadwork { 0.9 } else { 0.1 }),
            centroid_distance: i as f32,
        }
    }

    fn inputs() -> PlanInputs {
        let mut members = Vec::new();
        for i in 0..40 {
            let l = if i % 2 == 0 {
                Label::Roadwork
            } else {
                Label::Clean
            };
            members.push(member(i, 0, Some(l), &["daytime=day", "weather=clear"]));
        }
        // Cluster 1: night traffic, unlabelled, under-covered; a few labelled, all clean.
        for i in 40..52 {
            let mut m = member(i, 1, None, &["daytime=night", "weather=rain"]);
            m.source = "validator".into();
            m.era = "crop224".into();
            members.push(m);
        }
        for i in 52..64 {
            members.push(member(
                i,
                1,
                Some(Label::Clean),
                &["daytime=night", "weather=rain"],
            ));
        }
        PlanInputs {
            mine_run: "mine-1".into(),
            embedding_model: "m".into(),
            clusters: vec![
                ClusterFacts {
                    cluster: 0,
                    size: 40,
                    under_covered: false,
                    error_rate: Some(0.0),
                    n_labelled: 40,
                    train_share: 0.77,
                    traffic_share: 0.1,
                    drift_ratio: 0.1,
                },
                ClusterFacts {
                    cluster: 1,
                    size: 24,
                    under_covered: true,
                    error_rate: None,
                    n_labelled: 12,
                    train_share: 0.23,
                    traffic_share: 0.9,
                    drift_ratio: 3.9,
                },
            ],
            members,
            done: HashMap::new(),
        }
    }

    #[test]
    fn gaps_are_found_and_planned_deterministically_within_the_budget() {
        let cfg = SynthConfig::default();
        let inp = inputs();
        let plan = make_plan(&cfg, &inp);
        let keys: Vec<&str> = plan.gaps.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "imbalance:daytime=night",
                "imbalance:weather=rain",
                "under-covered:c1"
            ],
            "{plan}"
        );
        // The night stratum has only clean labels: it asks for roadwork, at night, in rain.
        let night = &plan.requests[0];
        assert_eq!(night.label, Label::Roadwork);
        assert_eq!(
            night.attributes.get("daytime").map(String::as_str),
            Some("night")
        );
        assert_eq!(
            night.attributes.get("weather").map(String::as_str),
            Some("rain")
        );
        // The under-covered cluster is mostly 224² traffic crops.
        let uc: Vec<&SynthRequest> = plan
            .requests
            .iter()
            .filter(|r| r.gap == "under-covered:c1")
            .collect();
        assert!(!uc.is_empty());
        assert_eq!((uc[0].width, uc[0].height), (224, 224));
        // Capped: 24 real members × 0.5 = 12 images for the cluster in all.
        assert!(uc.iter().map(|r| r.n).sum::<usize>() <= 12);
        let capped = make_plan(
            &SynthConfig {
                checks: crate::synth::config::CheckConfig {
                    max_synthetic_ratio: 0.1,
                    ..Default::default()
                },
                ..cfg.clone()
            },
            &inp,
        );
        assert!(
            capped
                .requests
                .iter()
                .filter(|r| r.gap == "under-covered:c1")
                .map(|r| r.n)
                .sum::<usize>()
                <= 2
        );
        assert!(
            capped.notes.iter().any(|n| n.contains("capped")),
            "{capped}"
        );
        // Same inputs → same jobs.
        let again = make_plan(&cfg, &inp);
        let ids = |p: &Plan| {
            p.jobs
                .iter()
                .map(|j| (j.synth_id.clone(), j.seed, j.prompt.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&plan), ids(&again));
        // A clean procedural source lets roadwork be added to the same scene.
        assert!(
            plan.jobs
                .iter()
                .any(|j| j.task == Task::AddElement && j.source.is_some())
        );
        // Another seed → other jobs.
        let other = make_plan(
            &SynthConfig {
                seed: 1,
                ..cfg.clone()
            },
            &inp,
        );
        assert_ne!(ids(&plan), ids(&other));
        // The image budget cuts, interleaved across requests.
        let tight = make_plan(
            &SynthConfig {
                max_images: 3,
                ..cfg.clone()
            },
            &inp,
        );
        assert_eq!(tight.jobs.len(), 3);
        assert_eq!(tight.over_budget, plan.jobs.len() - 3);
        let reqs: std::collections::HashSet<&str> =
            tight.jobs.iter().map(|j| j.request_id.as_str()).collect();
        assert_eq!(reqs.len(), 3.min(plan.requests.len()));
        // Finished jobs are not planned again; failed ones are.
        let mut done = inp.clone();
        done.done
            .insert(plan.jobs[0].synth_id.clone(), SynthStatus::Accepted);
        done.done
            .insert(plan.jobs[1].synth_id.clone(), SynthStatus::Failed);
        let rerun = make_plan(&cfg, &done);
        assert_eq!(rerun.already_done, 1);
        assert_eq!(rerun.jobs.len(), plan.jobs.len() - 1);
    }

    #[test]
    fn the_dollar_budget_is_never_exceeded() {
        let mut cfg = SynthConfig {
            backend: BackendKind::Bedrock,
            max_usd: 0.25,
            ..SynthConfig::default()
        };
        let plan = make_plan(&cfg, &inputs());
        assert!(micro_usd(plan.cost.usd) <= micro_usd(0.25), "{plan}");
        assert!(plan.over_budget > 0);
        assert!(plan.jobs.iter().all(|j| j.seed >= 1));
        cfg.max_usd = 0.0;
        assert!(make_plan(&cfg, &inputs()).jobs.is_empty());
    }

    #[test]
    fn prompts_follow_templates_and_phrases() {
        let p = PromptConfig::default();
        let attrs: BTreeMap<String, String> = [
            ("daytime", "night"),
            ("environment", "highway"),
            ("weather", "fog"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            scene_phrase(&p, &attrs),
            "a multi-lane highway, at night under street lamps and headlights, in dense fog, low contrast"
        );
        let mut r = rng_of("x");
        let (pos, _) = prompts(&p, Task::TextToImage, Label::Roadwork, &attrs, &mut r);
        assert!(p.elements.iter().any(|e| pos.contains(e.as_str())), "{pos}");
        let (neg, _) = prompts(&p, Task::TextToImage, Label::Clean, &attrs, &mut r);
        assert!(neg.contains("no construction work"), "{neg}");
        let (_, search) = prompts(&p, Task::RemoveElement, Label::Clean, &attrs, &mut r);
        assert_eq!(search.as_deref(), Some(p.remove_search.as_str()));
    }
}
