//! The `credvault` binary: the command line ([`cli`]) over the `credvault` library.

mod cli;

/// mimalloc instead of the system allocator: each RPC makes many small,
/// short-lived allocations, and glibc's malloc was 12 % of the server's CPU
/// on the hot path (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
