//! The integration suite, one binary: each module is one concern, and each test starts
//! the real server (in this process on 127.0.0.1:0, or the built binary) and talks to it
//! with the generated client, grpcurl, raw HTTP/2 or a health probe. One binary links
//! the dependencies once: 24 test binaries took over 1 GB of disk and a link each.

// A test fails by panicking (unwrap is how it says so); its helpers are one crate's (pub is pub(crate)).
#![allow(clippy::unwrap_used, unreachable_pub)]

#[macro_use]
mod common;

mod api;
mod audit;
mod auth;
mod backup;
mod capacity;
mod cli;
mod client;
mod console;
mod faults;
mod feedback;
mod grpcurl;
mod hardening;
mod health;
mod healthcheck;
mod history;
mod hygiene;
mod integrity;
mod key_roots;
mod keys;
mod layers;
mod metrics;
mod model;
mod parsers;
mod poison;
mod postgres;
mod providers;
mod python;
mod reflection;
mod reload;
mod reverify;
mod scopes;
mod shutdown;
mod storage;
mod tls;
mod verify;
mod verify_on_write;
mod watch;
