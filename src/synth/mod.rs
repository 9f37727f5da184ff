//! Synthetic images: the stage that fills gaps in the data.
//!
//! Today: the offline procedural street-scene generator ([`scenes`]), the data source of the demo and
//! the tests, and the `procedural` backend of synthesis. Every image it makes is a pure function of
//! (seed, index), labelled by construction.

pub mod scenes;
