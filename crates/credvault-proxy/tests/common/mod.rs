//! The proxy's test bench: the real vault (`credvault::run`, in this process, on
//! 127.0.0.1:0), a fake provider over HTTPS with a test CA (the only thing
//! faked), and the real `credvault-proxy` binary as a process.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use credvault::api;
use credvault::api::credential_vault_service_client::CredentialVaultServiceClient;
use credvault::auth::{callers_entry, mint_token, Permission};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Admin = CredentialVaultServiceClient<InterceptedService<Channel, Bearer>>;

/// What the fake provider saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
}

impl Seen {
    /// Every value of header `name`.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// How the fake answers: a status, a `Retry-After`, a body of so many bytes.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body_bytes: u64,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            status: 200,
            retry_after: None,
            body_bytes: 0,
        }
    }
}

/// A fake provider over HTTPS (HTTP/1.1 and HTTP/2), its certificate for `localhost`.
pub struct Fake {
    pub addr: SocketAddr,
    pub ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Fake {
    pub async fn start() -> Fake {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "fake provider test ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer::default()));
        let (s, a) = (Arc::clone(&seen), Arc::clone(&answer));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen, answer) = (acceptor.clone(), Arc::clone(&s), Arc::clone(&a));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
                            async move {
                                let method = req.method().to_string();
                                let target = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("?").to_owned())
                                    })
                                    .collect();
                                let mut body = req.into_body();
                                let mut body_bytes = 0u64;
                                while let Some(frame) = body.frame().await {
                                    match frame {
                                        Ok(f) => {
                                            if let Some(d) = f.data_ref() {
                                                body_bytes += d.len() as u64;
                                            }
                                        }
                                        Err(_) => break,
                                    }
                                }
                                seen.lock().unwrap().push(Seen {
                                    method,
                                    target,
                                    headers,
                                    body_bytes,
                                });
                                let answer = answer.lock().unwrap().clone();
                                let mut response = http::Response::builder().status(answer.status);
                                if let Some(s) = answer.retry_after {
                                    response = response.header("retry-after", s.to_string());
                                }
                                let body: http_body_util::combinators::UnsyncBoxBody<
                                    Bytes,
                                    std::io::Error,
                                > = if answer.body_bytes > 0 {
                                    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                                    let total = answer.body_bytes;
                                    let stream = futures_util::stream::unfold(0u64, move |sent| {
                                        let chunk = chunk.clone();
                                        async move {
                                            (sent < total).then(|| {
                                                let n = (total - sent).min(chunk.len() as u64);
                                                (
                                                    Ok::<_, std::io::Error>(
                                                        hyper::body::Frame::data(
                                                            chunk.slice(..n as usize),
                                                        ),
                                                    ),
                                                    sent + n,
                                                )
                                            })
                                        }
                                    });
                                    http_body_util::StreamBody::new(stream).boxed_unsync()
                                } else {
                                    Full::new(Bytes::from_static(b"{\"ok\":true}"))
                                        .map_err(|never| match never {})
                                        .boxed_unsync()
                                };
                                Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Fake {
            addr,
            ca_pem: ca.pem(),
            seen,
            answer,
        }
    }

    /// The base URL a credential of this fake names.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}/api", self.addr.port())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// The vault, in this process.
pub struct Vault {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub proxy_token: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Vault {
    /// A vault whose Fleetio credentials point at `fake`.
    pub async fn start(fake: &Fake) -> Vault {
        Vault::start_with_base_url(&fake.base_url()).await
    }

    /// A vault whose Fleetio credentials point at `base_url`.
    pub async fn start_with_base_url(base_url: &str) -> Vault {
        let dir = tempfile::TempDir::new().unwrap();
        let (admin, proxy) = (mint_token(), mint_token());
        let callers = [
            callers_entry("admin", &admin, &Permission::ALL),
            callers_entry("proxy", &proxy, &[Permission::HeadersRead]),
        ]
        .join("\n");
        let key = credvault::crypto::MasterKey::generate_base64();
        let config = credvault::Config {
            store: credvault::config::StoreConfig::Sled {
                dir: dir.path().to_owned(),
            },
            data_dir: dir.path().to_owned(),
            keyring: Some(credvault::config::parse_keyring(&key, None).unwrap().into()),
            keyring_source: None,
            key_roots: None,
            callers: credvault::auth::Callers::from_toml(&callers)
                .unwrap()
                .into(),
            callers_file: None,
            audit_log: None,
            audit_retention: Duration::ZERO,
            audit_fail_open: false,
            audit_max_file_size: 0,
            audit_max_files: 0,
            audit_sync: Default::default(),
            audit_digests: Default::default(),
            transport: Default::default(),
            refusal_summary_interval: Duration::from_secs(10),
            tls: None,
            health_listen: None,
            providers: credvault::provider::ProviderSettings {
                base_urls: [("fleetio".to_owned(), base_url.to_owned())].into(),
                ..Default::default()
            },
            reverify: Default::default(),
            drain_delay: Duration::ZERO,
            liveness_stuck_after: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(1),
            metrics_listen: None,
            console: None,
            keep_versions: credvault::vault::DEFAULT_KEEP_VERSIONS,
            recovery_window: credvault::vault::DEFAULT_RECOVERY_WINDOW,
            watch: Default::default(),
            feedback: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = credvault::run(listener, config, shutdown).await {
                eprintln!("the vault stopped: {e}");
            }
        });
        let vault = Vault {
            addr,
            admin_token: admin.to_string(),
            proxy_token: proxy.to_string(),
            _dir: dir,
            _stop: stop,
        };
        // Wait until it answers.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vault
    }

    pub async fn admin(&self) -> Admin {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        CredentialVaultServiceClient::with_interceptor(
            channel,
            Bearer(format!("Bearer {}", self.admin_token).parse().unwrap()),
        )
    }
}

fn fleetio(api_key: &str, account_token: &str) -> credvault::api::FleetioSecret {
    credvault::api::FleetioSecret {
        api_key: api_key.into(),
        account_token: account_token.into(),
        api_version: String::new(),
    }
}

/// Creates a Fleetio credential.
pub async fn create(admin: &mut Admin, name: &str, api_key: &str, account_token: &str) {
    admin
        .create_credential(api::CreateCredentialRequest {
            name: name.into(),
            secret: Some(api::create_credential_request::Secret::Fleetio(fleetio(
                api_key,
                account_token,
            ))),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Replaces a credential's secret.
pub async fn rotate(admin: &mut Admin, name: &str, api_key: &str, account_token: &str) {
    admin
        .update_credential(api::UpdateCredentialRequest {
            r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
            secret: Some(api::update_credential_request::Secret::Fleetio(fleetio(
                api_key,
                account_token,
            ))),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The `credvault-proxy` binary, serving.
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl ProxyProcess {
    /// Starts `credvault-proxy serve` against `vault`, with `routes` (TOML) and the
    /// fake's CA trusted upstream; its CA in `dir`.
    pub async fn start(
        vault: &Vault,
        fake: &Fake,
        dir: &Path,
        routes: &str,
        extra: &[&str],
    ) -> ProxyProcess {
        use tokio::io::AsyncBufReadExt as _;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("routes.toml"), routes).unwrap();
        std::fs::write(dir.join("upstream-ca.pem"), &fake.ca_pem).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_credvault-proxy"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--vault"])
            .arg(vault.addr.to_string())
            .arg("--routes-file")
            .arg(dir.join("routes.toml"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--upstream-ca-file")
            .arg(dir.join("upstream-ca.pem"))
            .args(extra)
            .env("CREDVAULT_TOKEN", &vault.proxy_token)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("the proxy reports its address")
            .unwrap()
            .unwrap_or_else(|| panic!("the proxy exited: {}", stderr.lock().unwrap()));
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        ProxyProcess {
            child,
            addr,
            dir: dir.to_owned(),
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The proxy's CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca").join("ca.pem")
    }
}

/// Runs curl with `args`: its exit status, stdout and stderr.
pub async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .expect("curl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends `request` (raw bytes) over TCP to `addr` and reads the answer's status line.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}
