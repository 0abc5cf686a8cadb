//! Builds the client of `proto/` (the same file the server builds) with protox: no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile([root.join("credvault/v1/credvault.proto")], [&root])?;
    // Messages that carry secret values get no derived Debug; src/proto.rs redacts them.
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
        .build_server(false)
        .skip_debug(secret_messages)
        .compile_fds(fds)?;
    Ok(())
}
