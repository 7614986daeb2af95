//! dualsight: Hugging Face's VisionTextDualEncoder in Rust, and a daemon that
//! indexes photo folders with it and answers text-to-image queries over gRPC.
//!
//! Module map (data flows top to bottom):
//! - [`model`]: the dual encoder (HF configs, one file per tower, projections,
//!   logit scale, contrastive loss, checkpoint load / compose / init / save).
//! - [`preprocess`]: image decoding with limits and EXIF orientation, the image
//!   processors driven by `preprocessor_config.json`, the tokenizer.
//! - [`store`]: sled, the durable truth (files, vectors, hashes, failures).
//! - [`index`]: the HNSW (hnsw_rs), a rebuildable cache over the store.
//! - [`ingest`]: watcher, reconcile scan, decode pool, batcher, commit.
//! - [`server`]: the tonic gRPC service: validate, convert, call core, map errors.
//! - [`encoder`]: a loaded checkpoint (model + processors) that turns files
//!   and strings into vectors; [`device`]: where it runs.
//! - [`cli`]: the subcommands; `main.rs` only dispatches; [`heap`]: handing
//!   freed memory back to the OS.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod device;
pub mod durable;
pub mod encoder;
pub mod engine;
pub mod heap;
pub mod index;
pub mod ingest;
pub mod model;
pub mod preprocess;
pub mod server;
pub mod shutdown;
pub mod store;
