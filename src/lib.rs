//! dualsight: Hugging Face's VisionTextDualEncoder in Rust, and a daemon that
//! indexes photo folders with it and answers text-to-image queries over gRPC.
//!
//! Module map (data flows top to bottom; each layer uses only those above it):
//! - [`model`]: the dual encoder (one file per tower with its HF config,
//!   projections, logit scale, contrastive loss, checkpoint load / compose /
//!   init / save); `model::cpu` and `model::lanes`: the CPU fast paths.
//! - [`preprocess`]: image decoding with limits and EXIF orientation, the
//!   image processors driven by `preprocessor_config.json`, the tokenizer.
//! - [`encoder`]: a loaded checkpoint (model + processors) that turns files
//!   and strings into vectors; [`device`]: where it runs.
//! - [`store`]: sled, the durable truth (files, vectors, hashes, failures).
//! - [`index`]: the HNSW (hnsw_rs), a rebuildable cache over the store.
//! - [`engine`]: one model's store space and index, and the one search
//!   routine (candidates, exact rescoring, filters, widening).
//! - [`ingest`]: the change feed (walk, watch, reconcile) and the pipeline
//!   (decode pool, batcher, vision tower, commit through the engine).
//! - [`server`]: the tonic gRPC service over the [`server::Core`] port:
//!   validate, convert, call the core, map errors.
//! - [`daemon`]: `dualsight serve`: wiring, model switching, progress, and
//!   the core over the engine.
//! - [`train`]: contrastive fine-tuning (`dualsight train`).
//! - [`config`]: layered settings; [`cli`]: the subcommands (`main.rs` only
//!   dispatches).
//! - Shared pieces: [`durable`] (crash-safe file writes), [`shutdown`] (the
//!   stop signal), [`simd`] (the CPU vector level our kernels run at),
//!   [`heap`] (handing freed memory back to the OS), [`rng`] (the seeded
//!   generator of training's shuffles and dropout).
//!
//! The benchmark harness is the `dualsight-bench` crate in `bench/`; the
//! kill -9 fault harness is `dualsight-harness` in `harness/`.

pub mod civil;
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
pub mod logging;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod rng;
pub mod server;
pub mod shutdown;
pub mod simd;
pub mod store;
pub mod thumbs;
pub mod train;
pub mod web;
