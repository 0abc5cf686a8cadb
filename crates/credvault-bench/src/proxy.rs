//! What credvault-proxy adds: the same request sent to a fast local upstream
//! directly (the worker holding the key and attaching the headers itself) and
//! through the proxy's base-URL form, side by side at each concurrency, for an
//! upstream over TLS (HTTP/2 by ALPN) and one over plain HTTP/1.1. Reports the
//! added p50/p99 latency, the throughput ratio and the proxy's CPU per request,
//! in two layouts: every process on every core, and (with two cores or more)
//! the proxy on a core of its own, as a sidecar with its own CPU, the bench
//! (the worker and the upstream, which in production runs elsewhere) on the rest.

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
    /// Starts the proxy; on `cpus` (and as many threads) when given.
    async fn start(
        bin: &Path,
        dir: &Path,
        vault: &str,
        token: &str,
        cpus: Option<&[usize]>,
    ) -> ProxyProcess {
        use tokio::io::AsyncBufReadExt as _;
        let mut command = tokio::process::Command::new(bin);
        command.arg("serve");
        if let Some(cpus) = cpus {
            command.arg("--threads").arg(cpus.len().to_string());
            let set = affinity::cpu_set(cpus);
            // SAFETY: between fork and exec the closure only makes the
            // sched_setaffinity system call (async-signal-safe) on a set built before.
            unsafe {
                command.pre_exec(move || affinity::set(0, &set));
            }
        }
        let mut child = command
            .args([
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
pub(crate) async fn figures(args: &Args, work: &Path, token: &str, rows: &mut Vec<Row>) -> Value {
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
        for layout in Layout::all() {
            let proxy = ProxyProcess::start(
                &args.proxy_bin,
                work,
                &server.addr,
                token,
                layout.proxy_cpus(),
            )
            .await;
            layout.enter();
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
                // Rounds of direct then via, side by side; the medians are reported.
                let mut rounds = Vec::new();
                for _ in 0..args.proxy_rounds.max(1) {
                    let d = load(
                        &format!("direct {kind}{}", layout.suffix()),
                        c,
                        args.warmup,
                        args.duration,
                        Arc::clone(&direct),
                        None,
                    )
                    .await;
                    let p = load(
                        &format!("via credvault-proxy {kind}{}", layout.suffix()),
                        c,
                        args.warmup,
                        args.duration,
                        Arc::clone(&via),
                        proxy.child.id(),
                    )
                    .await;
                    rounds.push(json!({
                        "added_p50_us": p.p50_us as i64 - d.p50_us as i64,
                        "added_p99_us": p.p99_us as i64 - d.p99_us as i64,
                        "rps_ratio": p.rps / d.rps.max(1.0),
                        "proxy_cpu_us_per_request": p.server_cpu_us_per_request,
                        "errors": d.errors + p.errors,
                    }));
                    rows.push(d);
                    rows.push(p);
                }
                let median = |field: &str| {
                    let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[field].as_f64()).collect();
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied()
                };
                out.push(json!({
                    "upstream": kind,
                    "layout": layout.name(),
                    "concurrency": c,
                    "added_p50_us": median("added_p50_us"),
                    "added_p99_us": median("added_p99_us"),
                    "rps_ratio": median("rps_ratio"),
                    "proxy_cpu_us_per_request": median("proxy_cpu_us_per_request"),
                    "errors": rounds.iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
                    "rounds": rounds,
                }));
            }
            layout.leave();
            drop(proxy);
        }
        server.stop().await;
    }
    println!();
    println!("| upstream | layout | concurrency | added p50 µs | added p99 µs | req/s via proxy / direct (rounds) | proxy CPU µs/req |");
    println!("|---|---|---:|---:|---:|---|---:|");
    let shown =
        |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
    for r in &out {
        let rounds: Vec<String> = r["rounds"]
            .as_array()
            .map(|a| a.iter().map(|x| shown(&x["rps_ratio"], 2)).collect())
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {} | {} | {} ({}) | {} |",
            r["upstream"].as_str().unwrap_or(""),
            r["layout"].as_str().unwrap_or(""),
            r["concurrency"],
            shown(&r["added_p50_us"], 0),
            shown(&r["added_p99_us"], 0),
            shown(&r["rps_ratio"], 2),
            rounds.join(", "),
            shown(&r["proxy_cpu_us_per_request"], 1),
        );
    }
    Value::Array(out)
}

/// Where the processes run during a proxy measurement.
#[derive(Clone, Debug)]
enum Layout {
    /// Every process on every core this one may use.
    Shared,
    /// The proxy (one thread) on the last core, the bench on the others.
    OwnCore {
        proxy: Vec<usize>,
        bench: Vec<usize>,
        all: Vec<usize>,
    },
}

impl Layout {
    /// Both layouts, the second only with two cores or more to split.
    fn all() -> Vec<Layout> {
        let mut layouts = vec![Layout::Shared];
        if let Ok(all) = affinity::allowed() {
            if let Some((last, rest)) = all.split_last() {
                if !rest.is_empty() {
                    layouts.push(Layout::OwnCore {
                        proxy: vec![*last],
                        bench: rest.to_vec(),
                        all: all.clone(),
                    });
                }
            }
        }
        layouts
    }

    fn name(&self) -> &'static str {
        match self {
            Layout::Shared => "shared cores",
            Layout::OwnCore { .. } => "proxy on its own core",
        }
    }

    fn suffix(&self) -> &'static str {
        match self {
            Layout::Shared => "",
            Layout::OwnCore { .. } => " (own core)",
        }
    }

    fn proxy_cpus(&self) -> Option<&[usize]> {
        match self {
            Layout::Shared => None,
            Layout::OwnCore { proxy, .. } => Some(proxy),
        }
    }

    /// Moves this process's threads to its cores.
    fn enter(&self) {
        if let Layout::OwnCore { bench, .. } = self {
            if let Err(e) = affinity::pin_this_process(bench) {
                eprintln!("cannot pin the bench to cores {bench:?}: {e}");
            }
        }
    }

    /// Gives this process every core back.
    fn leave(&self) {
        if let Layout::OwnCore { all, .. } = self {
            let _ = affinity::pin_this_process(all);
        }
    }
}

/// CPU affinity (Linux): which cores a thread may run on.
mod affinity {
    /// A set of cores.
    pub(super) fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        set
    }

    /// Puts thread `tid` (0: the calling one) on `set`.
    pub(super) fn set(tid: libc::pid_t, set: &libc::cpu_set_t) -> std::io::Result<()> {
        // SAFETY: `set` is a valid cpu_set_t of the size given.
        let rc =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The cores this process may run on.
    pub(super) fn allowed() -> std::io::Result<Vec<usize>> {
        let mut set = cpu_set(&[]);
        // SAFETY: `set` is a valid cpu_set_t of the size given.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            // SAFETY: `cpu` is below CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect())
    }

    /// Puts every thread of this process on `cpus` (threads made later inherit it).
    pub(super) fn pin_this_process(cpus: &[usize]) -> std::io::Result<()> {
        let set = cpu_set(cpus);
        for entry in std::fs::read_dir("/proc/self/task")? {
            let tid = entry?
                .file_name()
                .to_string_lossy()
                .parse::<libc::pid_t>()
                .map_err(std::io::Error::other)?;
            self::set(tid, &set)?;
        }
        Ok(())
    }
}
