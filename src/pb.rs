//! Code generated from `proto/inventory/v1/inventory.proto` by `build.rs`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("inventory.v1");

/// The encoded file descriptor set of the service, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inventory_descriptor");
