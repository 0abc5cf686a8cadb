//! The `credvault` binary: a thin shell over [`credvault::cli`].

fn main() -> std::process::ExitCode {
    credvault::cli::main()
}
