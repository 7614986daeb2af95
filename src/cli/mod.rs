//! (placeholder: filled in by its own change)

pub mod client;
