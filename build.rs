//! Generates the gRPC server and client code from `proto/`, with a vendored `protoc` so a
//! fresh machine needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut prost_config = prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let well_known_types = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("inventory_descriptor.bin"))
        .compile_with_config(
            prost_config,
            &[PathBuf::from("proto/inventory/v1/inventory.proto")],
            &[PathBuf::from("proto"), well_known_types],
        )?;
    Ok(())
}
