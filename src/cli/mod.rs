//! Subcommand handlers too large for `main.rs`, one file per stage.

pub mod train;
