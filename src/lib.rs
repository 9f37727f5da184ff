//! `roadwork`: the data engine and active-learning loop behind an image classifier that serves live
//! traffic (first user: a NATIX StreetVision subnet-72 miner answering P(roadwork) per street image).
//!
//! The loop, one module per stage (see docs/ARCHITECTURE.md):
//! - [`store`] owns the Lance schema: samples, labels, predictions, runs, snapshots.
//! - [`ingest`] brings image folders, NATIX parquet shards and validator query logs into the store.
//! - [`embed`] computes DINOv3 features in Burn (CPU, or CUDA with the `cuda` feature).
//! - [`labels`] exports selections for labelling (sheet, Label Studio tasks) and imports human and
//!   VLM-teacher labels back, all or nothing.
//! - [`imaging`] decodes and fingerprints images the same way for every stage.
//! - [`synth`] makes images; today the offline procedural street-scene generator.
//! - [`train`] fits, calibrates, evaluates and registers the classification head; promotes it.
//! - [`plot`] draws the SVG charts of the reports.
//! - [`export`] writes a selection, snapshot or filter as Parquet, `imagefolder`, NATIX Parquet or
//!   FiftyOne's layout; `ingest` reads each back.
//! - [`query`] answers ad-hoc SQL over the store through polars.
//! - [`pipeline`] composes the stages: the nightly job (`roadwork nightly`) and the demo.
//! - [`testdata`] generates the deterministic synthetic data that tests and benchmarks share.
//! - [`bench`] measures the stages (`roadwork bench …`); `docs/BENCHMARKS.md` carries its numbers.
//!
//! Layers point down: nothing in the library imports `bench` or the binary's `cli`.

pub mod backend;
pub mod bench;
pub mod config;
pub mod embed;
pub mod export;
pub(crate) mod gemm;
#[cfg(feature = "cuda")]
pub(crate) mod gpu;
pub mod imaging;
pub mod ingest;
pub mod labels;
pub mod mine;
pub mod pipeline;
pub mod plot;
pub mod query;
pub mod serve;
pub mod store;
pub mod synth;
pub mod testdata;
pub mod train;
