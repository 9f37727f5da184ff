//! Subcommand handlers too large for `main.rs`, one file per stage.

pub mod mine;
pub mod train;
