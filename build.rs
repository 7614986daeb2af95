//! Generates the gRPC code for `proto/dualsight/v1/dualsight.proto` (server and
//! client) and the file descriptor set that server reflection serves.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    // prost-build runs `protoc`, which is not part of a Rust toolchain; the
    // vendored binary makes a bare `cargo build` (and CI) work without a
    // system package. An explicit PROTOC from the environment still wins.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: set_var is unsafe in edition 2024 because other threads may
        // read the environment concurrently; this build script is
        // single-threaded at this point and sets it before prost-build reads it.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("dualsight_descriptor.bin"))
        .compile_protos(&["proto/dualsight/v1/dualsight.proto"], &["proto"])?;

    // A new .proto file in the folder should also trigger a rebuild.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
