//! Generates the bus message types from proto/ with a pure-Rust protobuf
//! compiler, so building needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/bgpersist/bus/v1/bus.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    pack_relative_relocations();
    Ok(())
}

/// The writer and the operator are position-independent, so every pointer in
/// their static data is relocated at start. Packed (DT_RELR) relocations
/// replace 24 bytes per pointer with a bitmap: the writer's 2.4 MB
/// relocation table, read into memory by every pod at start, becomes a few
/// KB (docs/benchmarks.md). The loader needs glibc 2.36, the image's Debian
/// bookworm; the kubectl plugin runs on users' machines and keeps plain
/// relocations.
fn pack_relative_relocations() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        for bin in ["bgpersist-writer", "bgpersist-operator"] {
            println!("cargo:rustc-link-arg-bin={bin}=-Wl,-z,pack-relative-relocs");
        }
    }
}
