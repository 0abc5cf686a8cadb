//! The generated gRPC API (`credvault.v1`) and its encoded descriptor set for reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

use std::fmt;

tonic::include_proto!("credvault.v1");

/// The encoded `FileDescriptorSet` of `proto/`, with imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("credvault_descriptor");

/// The fully qualified name of the vault service, as health checks name it.
pub const SERVICE_NAME: &str = "credvault.v1.CredentialVaultService";

// Messages that carry secret values redact them in Debug (prost derives none for
// them): `Header` here, each provider's `<Provider>Secret` in its module.

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .finish()
    }
}
