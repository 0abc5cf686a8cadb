//! The generated `credvault.v1` client and messages, built from the server's `proto/`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

use std::fmt;

tonic::include_proto!("credvault.v1");

// Messages that carry secret values redact them in Debug (none is derived for them).

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl fmt::Debug for FleetioSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetioSecret")
            .field("api_key", &"[REDACTED]")
            .field("account_token", &"[REDACTED]")
            .field("api_version", &self.api_version)
            .finish()
    }
}

impl fmt::Debug for GenericSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericSecret")
            .field("provider", &self.provider)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}
