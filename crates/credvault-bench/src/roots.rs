//! Key roots side by side: the same server with its master key in a file, sealed
//! by OpenBao's Transit, or sealed by a SoftHSM2 token. Start-up to SERVING (the
//! first start makes and seals the key; a restart unseals it) and the hot path,
//! the providers measured one after the other in rounds; then Transit's hot path
//! again with OpenBao frozen (SIGSTOP): a read that called the KMS would stall.

use super::*;

/// The PKCS#11 module of Debian's softhsm2.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// One provider's server and its figures.
struct Measured {
    name: &'static str,
    seeded: Seeded,
    first_start: Duration,
    restart: Duration,
}

/// The flags (beyond the key file, which `file` keeps) of each root, and the
/// environment SoftHSM2 needs; `None` for a root this machine lacks.
async fn root_setups(
    args: &Args,
    dir: &Path,
    bao: Option<&Bao>,
) -> Vec<(&'static str, Vec<String>)> {
    let mut setups = vec![("file", Vec::new())];
    if let Some(bao) = bao {
        let call = |path: &str, body: serde_json::Value| {
            bao.http
                .post(format!("{}/v1/{path}", bao.url))
                .header("X-Vault-Token", BAO_TOKEN)
                .body(body.to_string())
                .send()
        };
        let mounted = call("sys/mounts/transit", json!({"type": "transit"})).await;
        let keyed = call("transit/keys/credvault", json!({})).await;
        if mounted.is_ok_and(|r| r.status().is_success())
            && keyed.is_ok_and(|r| r.status().is_success())
        {
            let token_file = dir.join("bao-token");
            std::fs::write(&token_file, BAO_TOKEN).expect("the token file");
            setups.push((
                "transit",
                vec![
                    "--key-provider=transit".into(),
                    format!("--transit-address={}", bao.url),
                    format!("--transit-token-file={}", token_file.display()),
                ],
            ));
        } else {
            eprintln!("key roots: Transit could not be set up; its rows are skipped");
        }
    }
    match softhsm(args, dir).await {
        Some(pin_file) => setups.push((
            "pkcs11",
            vec![
                "--key-provider=pkcs11".into(),
                format!("--pkcs11-module={SOFTHSM_MODULE}"),
                format!("--pkcs11-pin-file={}", pin_file.display()),
            ],
        )),
        None => eprintln!(
            "key roots: SoftHSM2 is not installed (apt-get install softhsm2); its rows are skipped"
        ),
    }
    setups
}

/// A SoftHSM2 token `credvault` in `dir` with its key: the PIN file.
async fn softhsm(args: &Args, dir: &Path) -> Option<PathBuf> {
    if !Path::new(SOFTHSM_MODULE).exists() {
        return None;
    }
    let tokens = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens).ok()?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .ok()?;
    // The servers this process starts inherit it.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let init = tokio::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "credvault",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()
        .await
        .ok()?;
    if !init.status.success() {
        return None;
    }
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, "1234").ok()?;
    let keygen = tokio::process::Command::new(&args.server_bin)
        .args(["pkcs11-keygen", "--module", SOFTHSM_MODULE])
        .arg("--pin-file")
        .arg(&pin_file)
        .output()
        .await
        .ok()?;
    if !keygen.status.success() {
        eprintln!(
            "key roots: pkcs11-keygen failed: {}",
            String::from_utf8_lossy(&keygen.stderr)
        );
        return None;
    }
    Some(pin_file)
}

/// Runs the step: rows for the hot path of each root, and the start-up figures.
pub(super) async fn figures(
    args: &Args,
    dir: &Path,
    token: &str,
    rows: &mut Vec<Row>,
) -> serde_json::Value {
    std::fs::create_dir_all(dir).expect("the key-roots work dir");
    let bao = if args.bao == "off" {
        None
    } else {
        Bao::start(&args.bao, dir).await
    };
    let mut measured = Vec::new();
    for (name, extra) in root_setups(args, dir, bao.as_ref()).await {
        let server_dir = dir.join(name);
        let first = Seeded::start(
            args,
            &args.server_bin,
            &server_dir,
            token,
            None,
            &extra,
            "seed",
        )
        .await;
        let first_start = first.server.started;
        first.server.stop().await;
        // Restarts: the sealed key is unsealed (Transit's decrypt, the HSM's C_Decrypt);
        // as many as the rounds, the median kept, the last server measured.
        let mut restarts = Vec::new();
        let server = loop {
            let server = Server::start(
                &args.server_bin,
                &server_dir,
                token,
                &args.server_log_level,
                None,
                &extra,
            )
            .await;
            restarts.push(server.started);
            if restarts.len() >= args.proxy_rounds.max(1) {
                break server;
            }
            server.stop().await;
        };
        restarts.sort();
        let restart = restarts[restarts.len() / 2];
        let chans = channels(&server.addr, args.channels).await;
        let vaults = vault_clients(&chans, token);
        measured.push(Measured {
            name,
            seeded: Seeded {
                server,
                chans,
                vaults,
                ids: Arc::clone(&first.ids),
                write: first.write,
            },
            first_start,
            restart,
        });
    }
    // The hot path, each root in turn, in rounds (one noisy second shows as one round).
    let c = 16;
    let mut by_root: Vec<Vec<f64>> = vec![Vec::new(); measured.len()];
    for _round in 0..args.proxy_rounds.max(1) {
        for (i, m) in measured.iter().enumerate() {
            let row = load(
                &format!("hot GetCredentialHeaders (key root: {})", m.name),
                c,
                args.warmup,
                args.duration,
                hot_op(&m.seeded.vaults, &m.seeded.ids),
                m.seeded.server.pid(),
            )
            .await;
            by_root[i].push(row.rps);
            rows.push(row);
        }
    }
    // Transit frozen: the same hot path while OpenBao cannot answer at all.
    let mut frozen = None;
    if let (Some(bao), Some(m)) = (&bao, measured.iter().find(|m| m.name == "transit")) {
        if let Some(pid) = bao.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
            let row = load(
                "hot GetCredentialHeaders (key root: transit, OpenBao stopped)",
                c,
                args.warmup,
                args.duration,
                hot_op(&m.seeded.vaults, &m.seeded.ids),
                m.seeded.server.pid(),
            )
            .await;
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
            frozen = Some((row.rps, row.errors));
            rows.push(row);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let file_rps = by_root.first().map(|v| median(v)).unwrap_or(0.0);
    let mut out = serde_json::Map::new();
    for (i, m) in measured.iter().enumerate() {
        let rps = median(&by_root[i]);
        eprintln!(
            "key root {:8} first start {:>6.0} ms, restart {:>6.0} ms (median), hot path c={c} {:>7.0} req/s (median of {}), {:.2} of file's",
            m.name,
            m.first_start.as_secs_f64() * 1e3,
            m.restart.as_secs_f64() * 1e3,
            rps,
            by_root[i].len(),
            rps / file_rps.max(1.0)
        );
        out.insert(
            m.name.into(),
            json!({
                "first_start_ms": m.first_start.as_secs_f64() * 1e3,
                "restart_ms": m.restart.as_secs_f64() * 1e3,
                "hot_rps_median": rps,
                "hot_rps_rounds": by_root[i],
                "hot_rps_vs_file": rps / file_rps.max(1.0),
            }),
        );
    }
    if let Some((rps, errors)) = frozen {
        eprintln!("key root transit with OpenBao stopped: {rps:.0} req/s, {errors} errors");
        out.insert(
            "transit_openbao_stopped".into(),
            json!({"hot_rps": rps, "errors": errors}),
        );
    }
    for m in measured {
        m.seeded.server.stop().await;
    }
    drop(bao);
    serde_json::Value::Object(out)
}
