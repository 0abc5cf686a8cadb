//! The processes measured: the credvault server (sled or PostgreSQL), OpenBao for
//! comparison, and the gRPC channels and clients toward them.

use super::*;

pub(super) type Vault = CredentialVaultServiceClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
pub(super) struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A running credvault server.
pub(super) struct Server {
    pub(super) child: tokio::process::Child,
    pub(super) addr: String,
    pub(super) started: Duration,
}

impl Server {
    pub(super) async fn start(
        bin: &Path,
        dir: &Path,
        token: &str,
        log_level: &str,
        database_url: Option<&str>,
        extra: &[String],
    ) -> Server {
        std::fs::create_dir_all(dir).expect("the server's work dir");
        let key = dir.join("master.key");
        if !key.exists() {
            credvault::config::write_private_file(&key, MasterKey::generate_base64().as_bytes())
                .expect("the server's key file");
            std::fs::write(
                dir.join("callers.toml"),
                callers_entry("bench", token, &Permission::ALL),
            )
            .expect("the server's callers file");
        }
        let log = dir.join("server.log");
        let _ = std::fs::remove_file(&log);
        let began = Instant::now();
        let child = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--reverify-interval",
                "0s",
                "--drain-delay",
                "0s",
            ])
            .args(["--log-level", log_level])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            // A key root (`--key-provider=transit|pkcs11` in `extra`) holds the master key instead.
            .args(
                (!extra.iter().any(|a| a.starts_with("--key-provider")))
                    .then(|| ["--master-key-file".as_ref(), key.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--callers-file")
            .arg(dir.join("callers.toml"))
            .env_remove("CREDVAULT_MASTER_KEY")
            .env(
                "CREDVAULT_STORE",
                if database_url.is_some() {
                    "postgres"
                } else {
                    "sled"
                },
            )
            .envs(database_url.map(|url| ("CREDVAULT_DATABASE_URL", url)))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the server's log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with cargo build --release)",
                    bin.display()
                )
            });
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "credvault serving")
                    .then(|| v["addr"].as_str().map(str::to_owned))
                    .flatten()
            }) {
                break addr;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "credvault did not start: {text}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // SERVING as a probe sees it.
        let channel = connect(&addr).await;
        let mut health = HealthClient::new(channel);
        while health
            .check(HealthCheckRequest {
                service: api::SERVICE_NAME.into(),
            })
            .await
            .map(|r| r.into_inner().status != 1)
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Server {
            started: began.elapsed(),
            child,
            addr,
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(super) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
    }
}

pub(super) async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a channel to the server")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("a connection to the server")
}

pub(super) async fn channels(addr: &str, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        out.push(connect(addr).await);
    }
    out
}

pub(super) fn vault_clients(chans: &[Channel], token: &str) -> Vec<Vault> {
    let auth = Auth(
        format!("Bearer {token}")
            .parse()
            .expect("a token is a header value"),
    );
    chans
        .iter()
        .map(|c| CredentialVaultServiceClient::with_interceptor(c.clone(), auth.clone()))
        .collect()
}

/// OpenBao's dev server on loopback, with `n` two-field secrets in KV v2.
pub(super) struct Bao {
    pub(super) child: tokio::process::Child,
    pub(super) url: String,
    pub(super) http: reqwest::Client,
}

pub(super) const BAO_TOKEN: &str = "credvault-bench-root";

impl Bao {
    pub(super) async fn start(bin: &str, dir: &Path) -> Option<Bao> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = tokio::process::Command::new(bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={BAO_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(std::fs::File::create(dir.join("bao.log")).ok()?)
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| eprintln!("OpenBao not started ({bin}: {e}); its rows are skipped"))
            .ok()?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .ok()?;
        let began = Instant::now();
        while http
            .get(format!("{url}/v1/sys/health"))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            if began.elapsed() > Duration::from_secs(30) {
                eprintln!("OpenBao did not become healthy; its rows are skipped");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Bao { child, url, http })
    }

    pub(super) async fn seed(&self, n: usize) -> Row {
        let (http, url) = (self.http.clone(), self.url.clone());
        let op: Op = Arc::new(move |i| {
            let body = json!({"data": {"api_key": format!("bench-api-key-{i:012}"), "account_token": format!("bench-account-{i}")}});
            let request = http
                .post(format!("{url}/v1/secret/data/bench-{i:06}"))
                .header("X-Vault-Token", BAO_TOKEN)
                .body(body.to_string());
            Box::pin(async move { request.send().await.is_ok_and(|r| r.status().is_success()) })
        });
        each_once("OpenBao KV write", n, op, self.child.id()).await
    }
}

pub(super) fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("credvault-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the work dir");
    dir
}
