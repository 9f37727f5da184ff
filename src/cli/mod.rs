//! Subcommand handlers too large for `main.rs`, one file per stage.

pub mod labels;
pub mod mine;
pub mod synth;
pub mod train;
