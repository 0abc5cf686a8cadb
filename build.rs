//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates the tonic code.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/credvault/v1/credvault.proto";
    println!("cargo:rerun-if-changed=proto");

    // protox resolves google/protobuf/* from its bundled well-known types and
    // keeps imports, so the descriptor set is complete for server reflection.
    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("credvault_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        // Secret-bearing messages get a redacting Debug written by hand (src/api.rs).
        .skip_debug([".credvault.v1.FleetioSecret", ".credvault.v1.Header"])
        .compile_fds(fds)?;
    Ok(())
}
