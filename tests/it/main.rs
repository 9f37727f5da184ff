//! Every integration and end-to-end test in one binary, a module per area (on two cores each
//! extra test binary re-links lancedb, polars and burn). Shared helpers live in `support`.

mod support;

mod cli;
mod embed;
mod export;
mod formats;
mod ingest;
mod interop;
mod labels;
mod layering;
mod mine;
mod nightly;
mod query;
mod scenes;
mod serve;
mod store;
mod synth;
mod train;
