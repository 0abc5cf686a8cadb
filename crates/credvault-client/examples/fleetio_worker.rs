//! An ingestion worker: gets a Fleetio credential's headers from credvault and
//! lists the account's vehicles with them, a few times over. The first ask
//! fetches the headers; the others read them from memory, kept current by the
//! watch stream (a rotation made meanwhile is used at the next call). Each call
//! is acquired first (it waits out a pause of the account and takes a request
//! from its budget), and every answer that is not a success is reported to the
//! vault, so one 429 pauses every worker of the account.
//!
//! ```sh
//! CREDVAULT_TOKEN=... cargo run -p credvault-client --example fleetio_worker -- \
//!     --credential fleetio-acme --calls 3
//! # against a local fake Fleetio instead of the base URL the vault gives:
//!     --base-url http://127.0.0.1:8080/api
//! ```

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The vault's gRPC endpoint.
    #[arg(long, env = "CREDVAULT_ADDR", default_value = "http://127.0.0.1:50051")]
    vault: String,
    /// A token with the headers.read permission.
    #[arg(long, env = "CREDVAULT_TOKEN", hide_env_values = true)]
    token: String,
    /// The credential's name in the vault.
    #[arg(long, default_value = "fleetio-acme")]
    credential: String,
    /// Fleetio's API base URL, over the one the vault gives (e.g. a local fake).
    #[arg(long)]
    base_url: Option<String>,
    /// How many times to list the vehicles.
    #[arg(long, default_value_t = 1)]
    calls: u32,
    /// The pause between calls.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    every: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{s:?} is not a duration like 500ms or 2s")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let vault = credvault_client::Client::builder(&args.vault)
        .token(args.token)
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for call in 0..args.calls {
        if call > 0 {
            tokio::time::sleep(args.every).await;
        }
        // A read from memory after the first call; waits while the account is paused.
        let headers = vault.acquire(&args.credential).await?;
        let base = args.base_url.as_deref().unwrap_or(headers.base_url());
        let url = format!("{}/v1/vehicles", base.trim_end_matches('/'));
        let response = http
            .get(&url)
            .headers(headers.to_header_map())
            .send()
            .await?;
        let status = response.status();
        let retry_after = credvault_client::retry_after(response.headers());
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        println!(
            "GET {url} -> {} ({} vehicles) with {} version {}",
            status.as_u16(),
            count(&body),
            headers.name(),
            headers.version()
        );
        if !status.is_success() {
            // The vault pauses the account on a 429 and re-verifies on a 401 / 403.
            let report = vault
                .report(&args.credential, status.as_u16(), retry_after)
                .await?;
            println!("reported {}: {}", status.as_u16(), report.message);
        }
        if status.as_u16() == 401 || status.as_u16() == 403 {
            eprintln!("fleetio refused the credential; ask an operator to rotate it");
            std::process::exit(2);
        }
    }
    let stats = vault.stats();
    println!(
        "fetched {} time(s), {} watch stream(s), {} update(s) pushed",
        stats.fetches, stats.streams, stats.updates
    );
    Ok(())
}

/// The records in a Fleetio list answer: a bare array, or `records` in newer API versions.
fn count(body: &serde_json::Value) -> usize {
    body.as_array()
        .or_else(|| body.get("records").and_then(serde_json::Value::as_array))
        .map_or(0, Vec::len)
}
