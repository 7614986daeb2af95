//! dualsight's integration tests, one binary (ripgrep-style): real tiny
//! checkpoints from tests/fixtures, real files, and (for the daemon) a real
//! gRPC server on a real socket.

mod cli;
mod daemon;
mod fuzz;
mod heif;
mod library;
mod model;
mod ops;
mod page;
mod pg_server;
mod postgres;
mod store;
mod train;
mod unit;
mod util;
