//! What credvault-proxy adds: the same request sent to a fast local upstream
//! directly (the worker holding the key and attaching the headers itself) and
//! through the proxy's base-URL form, side by side at each concurrency, for an
//! upstream over TLS (HTTP/2 by ALPN) and one over plain HTTP/1.1. Reports the
//! added p50/p99 latency, the throughput ratio and the proxy's CPU per request.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use super::{bench_secret, channels, load, vault_clients, Args, Op, Row, Server};
use credvault::api;

/// The fast upstream: answers `{"ok":true}` to anything, on a plain and a TLS port.
struct Upstream {
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    ca_pem: String,
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    // Read the body (none here): the request is whole before the answer.
    let _ = req.into_body().collect().await;
    Ok(http::Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

impl Upstream {
    async fn start() -> Upstream {
        let ca_key = rcgen::KeyPair::generate().expect("a key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "credvault-bench upstream ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("a CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("a leaf");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("a server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (plain_addr, tls_addr) = (
            plain.local_addr().expect("addr"),
            tls.local_addr().expect("addr"),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = plain.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                        .await;
                });
            }
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tls.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                        .await;
                });
            }
        });
        Upstream {
            plain: plain_addr,
            tls: tls_addr,
            ca_pem: ca.pem(),
        }
    }
}

/// A running credvault-proxy.
struct ProxyProcess {
    child: tokio::process::Child,
    addr: String,
}

impl ProxyProcess {
    async fn start(bin: &Path, dir: &Path, vault: &str, token: &str) -> ProxyProcess {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                "--vault",
                vault,
            ])
            .arg("--ca-dir")
            .arg(dir.join("proxy-ca"))
            .arg("--upstream-ca-file")
            .arg(dir.join("upstream-ca.pem"))
            .env("CREDVAULT_TOKEN", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (cargo build --release -p credvault-proxy)",
                    bin.display()
                )
            });
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = lines
            .next_line()
            .await
            .ok()
            .flatten()
            .expect("credvault-proxy reports its address");
        let addr = line.rsplit(' ').next().unwrap_or_default().to_owned();
        ProxyProcess { child, addr }
    }
}

/// The headers a worker holding the key attaches itself (what the proxy attaches for it).
fn held_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "authorization",
        "Token bench-api-key-000000000000".parse().expect("a value"),
    );
    h.insert("account-token", "bench-account-0".parse().expect("a value"));
    h.insert("x-api-version", "2024-03-15".parse().expect("a value"));
    h
}

fn get_op(client: reqwest::Client, url: String, headers: reqwest::header::HeaderMap) -> Op {
    let (url, headers) = (Arc::new(url), Arc::new(headers));
    Arc::new(move |_| {
        let (client, url, headers) = (client.clone(), Arc::clone(&url), Arc::clone(&headers));
        Box::pin(async move {
            match client
                .get(url.as_str())
                .headers((*headers).clone())
                .send()
                .await
            {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        })
    })
}

/// The proxy rows beside the direct ones, and the table of what the proxy adds.
pub async fn figures(args: &Args, work: &Path, token: &str, rows: &mut Vec<Row>) -> Value {
    let upstream = Upstream::start().await;
    std::fs::create_dir_all(work).expect("a work dir");
    std::fs::write(work.join("upstream-ca.pem"), &upstream.ca_pem).expect("the CA file");
    let ca = reqwest::Certificate::from_pem(upstream.ca_pem.as_bytes()).expect("the CA");
    let mut out = Vec::new();
    for (kind, base) in [
        (
            "https h2",
            format!("https://localhost:{}/api", upstream.tls.port()),
        ),
        (
            "http/1.1",
            format!("http://127.0.0.1:{}/api", upstream.plain.port()),
        ),
    ] {
        let dir = work.join(kind.replace(['/', ' '], "-"));
        let server = Server::start(
            &args.server_bin,
            &dir,
            token,
            &args.server_log_level,
            None,
            &[format!("--provider-base-url=fleetio={base}")],
        )
        .await;
        let chans = channels(&server.addr, 1).await;
        let mut vault = vault_clients(&chans, token).remove(0);
        vault
            .create_credential(api::CreateCredentialRequest {
                name: "bench-proxy".into(),
                secret: Some(bench_secret(0, false)),
                ..Default::default()
            })
            .await
            .expect("the bench credential");
        let proxy = ProxyProcess::start(&args.proxy_bin, work, &server.addr, token).await;
        let worker = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca.clone())
            .pool_max_idle_per_host(256)
            .build()
            .expect("a client");
        let direct = get_op(
            worker.clone(),
            format!("{base}/v1/users/me"),
            held_headers(),
        );
        let via = get_op(
            worker.clone(),
            format!("http://{}/c/bench-proxy/v1/users/me", proxy.addr),
            reqwest::header::HeaderMap::new(),
        );
        // The proxy holds the headers before it is measured.
        let began = Instant::now();
        while !via(0).await {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "the proxy never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for &c in &args.concurrency {
            let d = load(
                &format!("direct {kind}"),
                c,
                args.warmup,
                args.duration,
                Arc::clone(&direct),
                None,
            )
            .await;
            let p = load(
                &format!("via credvault-proxy {kind}"),
                c,
                args.warmup,
                args.duration,
                Arc::clone(&via),
                proxy.child.id(),
            )
            .await;
            out.push(json!({
                "upstream": kind,
                "concurrency": c,
                "added_p50_us": p.p50_us as i64 - d.p50_us as i64,
                "added_p99_us": p.p99_us as i64 - d.p99_us as i64,
                "rps_ratio": p.rps / d.rps.max(1.0),
                "proxy_cpu_us_per_request": p.server_cpu_us_per_request,
                "errors": d.errors + p.errors,
            }));
            rows.push(d);
            rows.push(p);
        }
        drop(proxy);
        server.stop().await;
    }
    println!();
    println!("| upstream | concurrency | added p50 µs | added p99 µs | req/s via proxy / direct | proxy CPU µs/req |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &out {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} |",
            r["upstream"].as_str().unwrap_or(""),
            r["concurrency"],
            r["added_p50_us"],
            r["added_p99_us"],
            r["rps_ratio"].as_f64().unwrap_or(0.0),
            r["proxy_cpu_us_per_request"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.1}")),
        );
    }
    Value::Array(out)
}
