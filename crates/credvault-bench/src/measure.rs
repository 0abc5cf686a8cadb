//! Measuring: a step's latency histogram and throughput ([`Row`]), CPU and memory
//! of a process, the load loop, and the side-by-side report.

use super::*;

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Row {
    pub(super) step: String,
    pub(super) concurrency: usize,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) rps: f64,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) server_rss_mb: Option<f64>,
    /// CPU time the measured server process spent per request (user + system, all threads).
    pub(super) server_cpu_us_per_request: Option<f64>,
    /// CPU time this load generator spent per request.
    pub(super) client_cpu_us_per_request: Option<f64>,
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

impl Row {
    pub(super) fn new(
        step: &str,
        concurrency: usize,
        requests: u64,
        errors: u64,
        took: Duration,
        hist: &Histogram<u64>,
        (rss, (server_cpu, client_cpu)): (Option<f64>, CpuUsed),
    ) -> Row {
        let per_request = |c: Option<Duration>| {
            c.filter(|_| requests > 0)
                .map(|c| c.as_secs_f64() * 1e6 / requests as f64)
        };
        Row {
            step: step.to_owned(),
            concurrency,
            requests,
            errors,
            rps: requests as f64 / took.as_secs_f64(),
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            server_rss_mb: rss,
            server_cpu_us_per_request: per_request(server_cpu),
            client_cpu_us_per_request: per_request(client_cpu),
        }
    }
}

/// CPU time used by the server (if measured) and by this process.
pub(super) type CpuUsed = (Option<Duration>, Option<Duration>);

/// The CPU time of the server (if measured) and of this process at one instant.
pub(super) struct CpuMark {
    pub(super) server: Option<u32>,
    pub(super) at: [Option<Duration>; 2],
}

impl CpuMark {
    pub(super) fn now(server: Option<u32>) -> Self {
        let at = [server, Some(std::process::id())].map(|p| p.and_then(cpu_time));
        CpuMark { server, at }
    }

    /// The CPU time each used since the mark.
    pub(super) fn used(&self) -> CpuUsed {
        let now = CpuMark::now(self.server).at;
        let delta = |i: usize| now[i].zip(self.at[i]).and_then(|(a, b)| a.checked_sub(b));
        (delta(0), delta(1))
    }
}

/// The CPU time (user + system, every thread) process `pid` has used so far.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ ticks, 100 per second on every mainstream architecture.
    Some(Duration::from_millis((utime + stime) * 10))
}

pub(super) type Op = Arc<dyn Fn(usize) -> futures_lite::BoxedOp + Send + Sync>;

mod futures_lite {
    pub(crate) type BoxedOp = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

/// Runs `op` from `concurrency` tasks: a warm-up, then `duration` measured.
pub(super) async fn load(
    step: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: Op,
    rss_of: Option<u32>,
) -> Row {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    // CPU time of the server and of this client over the measured window.
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let mark = CpuMark::now(rss_of);
        tokio::time::sleep_until(until.into()).await;
        mark.used()
    });
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let good = op(worker).await;
                if t0 >= measure_from {
                    let us = u64::try_from(t0.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = hist.record(us);
                    if good {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = histogram();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await.expect("a load task");
        hist.add(h).expect("histograms of one shape");
        ok += o;
        errors += e;
    }
    let row = Row::new(
        step,
        concurrency,
        ok,
        errors,
        duration,
        &hist,
        (rss_of.and_then(rss_mb), cpu.await.unwrap_or_default()),
    );
    eprintln!(
        "{:<28} c={:<3} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  errors {}  CPU/req server {} client {} µs",
        row.step,
        row.concurrency,
        row.rps,
        row.p50_us,
        row.p99_us,
        row.p999_us,
        row.errors,
        show_cpu(row.server_cpu_us_per_request),
        show_cpu(row.client_cpu_us_per_request)
    );
    row
}

pub(super) fn show_cpu(us: Option<f64>) -> String {
    us.map_or("-".into(), |c| format!("{c:.1}"))
}

pub(super) fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub(super) fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `op(i)` once for each `i` in `0..n`, from 16 tasks; every call must succeed.
pub(super) async fn each_once(step: &str, n: usize, op: Op, rss_of: Option<u32>) -> Row {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mark = CpuMark::now(rss_of);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (next, op) = (Arc::clone(&next), Arc::clone(&op));
        tasks.push(tokio::spawn(async move {
            let (mut hist, mut failed) = (histogram(), 0u64);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                if !op(i).await {
                    failed += 1;
                }
                let _ = hist.record(
                    u64::try_from(t0.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            }
            (hist, failed)
        }));
    }
    let (mut hist, mut failed) = (histogram(), 0);
    for t in tasks {
        let (h, f) = t.await.expect("a load task");
        hist.add(h).expect("histograms of one shape");
        failed += f;
    }
    assert_eq!(failed, 0, "{step}: {failed} of {n} calls failed");
    Row::new(
        step,
        16,
        n as u64,
        0,
        started.elapsed(),
        &hist,
        (rss_of.and_then(rss_mb), mark.used()),
    )
}

/// Prints, per concurrency, the rows `steps.0` over `steps.1` (named `names`):
/// req/s, p99 and server CPU per request; returns those ratios.
pub(super) fn side_by_side(
    rows: &[Row],
    concurrency: &[usize],
    steps: (&str, &str),
    names: (&str, &str),
) -> Vec<(usize, [Option<f64>; 3])> {
    let find = |step: &str, c: usize| rows.iter().find(|r| r.step == step && r.concurrency == c);
    let (a, b) = names;
    println!();
    println!(
        "| concurrency | {a} / {b} (req/s) | {a} / {b} (p99) | server CPU per request, {a} / {b} |"
    );
    println!("|---:|---:|---:|---:|");
    let show = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
    concurrency
        .iter()
        .map(|&c| {
            let (top, bottom) = (find(steps.0, c), find(steps.1, c));
            let ratio = |f: fn(&Row) -> f64| match (top, bottom) {
                (Some(x), Some(y)) if f(y) > 0.0 => Some(f(x) / f(y)),
                _ => None,
            };
            let found = [
                ratio(|r| r.rps),
                ratio(|r| r.p99_us as f64),
                ratio(|r| r.server_cpu_us_per_request.unwrap_or(0.0)),
            ];
            println!(
                "| {c} | {} | {} | {} |",
                show(found[0]),
                show(found[1]),
                show(found[2])
            );
            (c, found)
        })
        .collect()
}

pub(super) fn report(
    args: &Args,
    rows: &[Row],
    scale: &serde_json::Map<String, serde_json::Value>,
    watched: &serde_json::Map<String, serde_json::Value>,
    rss_after: Option<f64>,
) {
    let find = |step: &str, c: usize| rows.iter().find(|r| r.step == step && r.concurrency == c);
    println!(
        "| step | concurrency | req/s | p50 µs | p99 µs | p99.9 µs | errors | server RSS MB | server CPU µs/req | client CPU µs/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.step,
            r.concurrency,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.errors,
            r.server_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
            show_cpu(r.server_cpu_us_per_request),
            show_cpu(r.client_cpu_us_per_request)
        );
    }
    let mut ratios = serde_json::Map::new();
    println!();
    println!(
        "| concurrency | hot / floor (req/s) | hot / floor (p99) | hot / OpenBao (req/s) | postgres hot / floor (req/s) | server CPU per request, hot / floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &c in &args.concurrency {
        let hot = find("hot GetCredentialHeaders", c);
        let floor = find("floor Health/Check", c);
        let bao = find("OpenBao KV read", c);
        let ratio = |a: Option<&Row>, b: Option<&Row>, f: fn(&Row) -> f64| match (a, b) {
            (Some(a), Some(b)) if f(b) > 0.0 => Some(f(a) / f(b)),
            _ => None,
        };
        let tput = ratio(hot, floor, |r| r.rps);
        let p99 = ratio(hot, floor, |r| r.p99_us as f64);
        let vs_bao = ratio(hot, bao, |r| r.rps);
        let pg = ratio(find("hot GetCredentialHeaders (postgres)", c), floor, |r| {
            r.rps
        });
        let cpu = ratio(hot, floor, |r| r.server_cpu_us_per_request.unwrap_or(0.0));
        let compared = find("hot GetCredentialHeaders (compare)", c);
        let vs_compare = ratio(hot, compared, |r| r.rps);
        let cpu_vs_compare = ratio(hot, compared, |r| {
            r.server_cpu_us_per_request.unwrap_or(0.0)
        });
        let show = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "| {c} | {} | {} | {} | {} | {} |",
            show(tput),
            show(p99),
            show(vs_bao),
            show(pg),
            show(cpu)
        );
        ratios.insert(format!("c{c}"), json!({"hot_over_floor_rps": tput, "hot_over_floor_p99": p99, "hot_over_openbao_rps": vs_bao, "postgres_hot_over_floor_rps": pg, "hot_over_floor_server_cpu": cpu, "hot_over_compare_rps": vs_compare, "hot_over_compare_server_cpu": cpu_vs_compare}));
    }
    if args.compare_bin.is_some() {
        side_by_side(
            rows,
            &args.concurrency,
            (
                "hot GetCredentialHeaders",
                "hot GetCredentialHeaders (compare)",
            ),
            ("hot", "compare-bin hot"),
        );
    }
    if args.declared_file.is_some() {
        let found = side_by_side(
            rows,
            &args.concurrency,
            (
                "hot GetCredentialHeaders (declared fleetio)",
                "hot GetCredentialHeaders",
            ),
            ("declared fleetio", "built-in fleetio"),
        );
        for (c, [rps, _, cpu]) in found {
            if let Some(serde_json::Value::Object(r)) = ratios.get_mut(&format!("c{c}")) {
                r.insert("declared_over_builtin_rps".into(), json!(rps));
                r.insert("declared_over_builtin_server_cpu".into(), json!(cpu));
            }
        }
    }
    println!();
    println!("scale: {}", serde_json::Value::Object(scale.clone()));
    for (name, figures) in watched {
        println!("watch {name}: {figures}");
    }
    println!(
        "server RSS after the hot-path runs: {}",
        rss_after.map_or("-".into(), |m| format!("{m:.1} MB"))
    );
    let out = json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "duration_s": args.duration.as_secs_f64(),
        "credentials": args.credentials,
        "rows": rows,
        "ratios": ratios,
        "scale": scale,
        "watch": watched,
        "server_rss_after_hot_path_mb": rss_after,
        "server_bin": args.server_bin,
        "server_args": args.server_arg,
        "compare_bin": args.compare_bin,
        "compare_args": args.compare_arg,
    });
    if let Some(parent) = args.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&out).expect("the figures as JSON"),
    )
    .expect("the JSON file");
    eprintln!("wrote {}", args.json.display());
}
