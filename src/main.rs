//! The `credvault` binary: a thin shell over [`credvault::cli`].

/// mimalloc instead of the system allocator: each RPC makes many small,
/// short-lived allocations, and glibc's malloc was 12 % of the server's CPU
/// on the hot path (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    credvault::cli::main()
}
