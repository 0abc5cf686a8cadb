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

    // Secret-bearing messages (every `*Secret`, and `Header`) get no derived
    // Debug: prost requires one, so each must be written by hand, redacting (the
    // provider's module for its secret message, src/api.rs for `Header`).
    let secret_messages: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "credvault.v1")
        .flat_map(|f| f.message_type.iter())
        .map(|m| m.name().to_owned())
        .filter(|name| name.ends_with("Secret") || name == "Header")
        .map(|name| format!(".credvault.v1.{name}"))
        .collect();
    tonic_prost_build::configure()
        .skip_debug(secret_messages)
        .compile_fds(fds)?;
    Ok(())
}
