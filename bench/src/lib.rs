//! The benchmark harness of dualsight, beside the product rather than in it:
//! the daemon binary that systemd runs contains none of this, and never
//! spawns Python. It measures the product's own code paths (the encoder, the
//! ingest pipeline, the engine's search routine, a real `dualsight serve`)
//! on a full-size checkpoint, optionally beside transformers + PyTorch
//! (`scripts/bench_reference.py`) on the same machine.
//!
//! Module map:
//! - [`cli`]: flags → [`suite::BenchConfig`], run, render.
//! - [`suite`]: one run: the sections in order, the report.
//! - [`vision`], [`ingest`], [`search`], [`restart`]: the four sections.
//! - [`assets`]: the generated checkpoint and JPEGs, machine facts.
//! - [`synth`]: synthetic vectors and query texts.
//! - [`reference`]: the Python reference runner; [`report`]: figures and
//!   ratios; [`stats`]: repetition, percentiles, recall.
//!
//! Speed is measured here and only here: tests never assert timings.

pub mod assets;
pub mod cli;
pub mod ingest;
pub mod reference;
pub mod report;
pub mod restart;
pub mod search;
pub mod stats;
pub mod suite;
pub mod synth;
pub mod vision;
