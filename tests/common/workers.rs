//! The client crate as a worker uses it, and waiting for what a worker should see.

use super::*;

/// A worker's `credvault_client` of the vault at `url`, reconnecting quickly (50 to 500 ms).
pub fn worker_client(url: &str, token: &str) -> credvault_client::Client {
    credvault_client::Client::builder(url)
        .token(token)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .unwrap()
}

/// Waits (up to `limit`) until `check` holds, polling every 2 ms; how long it took.
pub async fn until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
