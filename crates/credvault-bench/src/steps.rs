//! The benchmark's steps: seeding credentials, the operations each step repeats
//! (hot read, update, rotate, health, OpenBao's read), history and scale.

use super::*;

/// The i-th credential's Fleetio secret: built in, or as the declared `fleetio-declared`.
pub(super) fn bench_secret(i: usize, declared: bool) -> create_credential_request::Secret {
    let (api_key, account_token, api_version) = (
        format!("bench-api-key-{i:012}"),
        format!("bench-account-{i}"),
        "2024-03-15".to_owned(),
    );
    if declared {
        create_credential_request::Secret::Generic(api::GenericSecret {
            provider: "fleetio-declared".into(),
            fields: [
                ("api_key".to_owned(), api_key),
                ("account_token".to_owned(), account_token),
                ("api_version".to_owned(), api_version),
            ]
            .into(),
        })
    } else {
        create_credential_request::Secret::Fleetio(api::FleetioSecret {
            api_key,
            account_token,
            api_version,
        })
    }
}

/// Creates `n` credentials at concurrency 16; the row is the durable-write measurement.
pub(super) async fn seed(
    clients: &[Vault],
    n: usize,
    prefix: &str,
    step: &str,
) -> (Vec<String>, Row) {
    seed_as(clients, n, prefix, step, false).await
}

/// Creates `n` credentials (of the declared Fleetio when `declared`) at concurrency 16.
pub(super) async fn seed_as(
    clients: &[Vault],
    n: usize,
    prefix: &str,
    step: &str,
    declared: bool,
) -> (Vec<String>, Row) {
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let (clients, sink, prefix) = (clients.to_vec(), Arc::clone(&ids), prefix.to_owned());
    let op: Op = Arc::new(move |i| {
        let (mut c, sink) = (clients[i % clients.len()].clone(), Arc::clone(&sink));
        let request = api::CreateCredentialRequest {
            name: format!("{prefix}-{i:06}"),
            description: "bench".into(),
            secret: Some(bench_secret(i, declared)),
            ..Default::default()
        };
        Box::pin(async move {
            match c.create_credential(request).await {
                Ok(r) => {
                    sink.lock().expect("the ids lock").push(
                        r.into_inner()
                            .credential
                            .expect("a created credential has its record")
                            .id,
                    );
                    true
                }
                Err(_) => false,
            }
        })
    });
    let row = each_once(step, n, op, None).await;
    let ids = std::mem::take(&mut *ids.lock().expect("the ids lock"));
    (ids, row)
}

/// A server started on `dir` and seeded with credentials, with its clients.
pub(super) struct Seeded {
    pub(super) server: Server,
    pub(super) chans: Vec<Channel>,
    pub(super) vaults: Vec<Vault>,
    pub(super) ids: Arc<Vec<String>>,
    /// The seeding's row (CreateCredential at 16).
    pub(super) write: Row,
}

impl Seeded {
    /// Starts `bin` on `dir` (on PostgreSQL when `database_url` is given) and
    /// creates `args.credentials` credentials, timed as the row `step`.
    pub(super) async fn start(
        args: &Args,
        bin: &Path,
        dir: &Path,
        token: &str,
        database_url: Option<&str>,
        extra: &[String],
        step: &str,
    ) -> Seeded {
        let server =
            Server::start(bin, dir, token, &args.server_log_level, database_url, extra).await;
        let chans = channels(&server.addr, args.channels).await;
        let vaults = vault_clients(&chans, token);
        let (ids, write) = seed(&vaults, args.credentials, "cred", step).await;
        Seeded {
            server,
            chans,
            vaults,
            ids: Arc::new(ids),
            write,
        }
    }
}

/// UpdateCredential (a description change) of a random credential of `seeded`.
pub(super) fn update_op(seeded: &Seeded) -> Op {
    let (vaults, ids) = (seeded.vaults.clone(), Arc::clone(&seeded.ids));
    Arc::new(move |w| {
        let mut c = vaults[w % vaults.len()].clone();
        let id = ids[rand::thread_rng().gen_range(0..ids.len())].clone();
        Box::pin(async move {
            c.update_credential(api::UpdateCredentialRequest {
                r#ref: Some(api::update_credential_request::Ref::Id(id)),
                description: Some("bench update".into()),
                ..Default::default()
            })
            .await
            .is_ok()
        })
    })
}

/// Rotates a random credential of `ids`: a new secret each time (a new version).
pub(super) fn rotate_op(vaults: &[Vault], ids: &Arc<Vec<String>>) -> Op {
    let (vaults, ids) = (vaults.to_vec(), Arc::clone(ids));
    Arc::new(move |w| {
        let mut c = vaults[w % vaults.len()].clone();
        let i = rand::thread_rng().gen_range(0..ids.len());
        let id = ids[i].clone();
        let n: u64 = rand::thread_rng().gen();
        Box::pin(async move { c.update_credential(rotation(id, n)).await.is_ok() })
    })
}

/// A rotation of credential `id` to a new key numbered `n`.
pub(super) fn rotation(id: String, n: u64) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Id(id)),
        secret: Some(api::update_credential_request::Secret::Fleetio(
            api::FleetioSecret {
                api_key: format!("bench-rotated-key-{n:020}"),
                account_token: format!("bench-account-{n}"),
                api_version: "2024-03-15".into(),
            },
        )),
        ..Default::default()
    }
}

/// Seeds two sets of credentials, gives one 9 rotations each (10 versions,
/// the default `--keep-versions`), then measures both side by side.
pub(super) async fn history_step(args: &Args, main: &Seeded, dir: &Path, rows: &mut Vec<Row>) {
    let n = args.credentials.min(2000);
    let (plain, row) = seed_as(
        &main.vaults,
        n,
        "plain",
        "credvault CreateCredential (history: none)",
        false,
    )
    .await;
    rows.push(row);
    let (hist, row) = seed_as(
        &main.vaults,
        n,
        "hist",
        "credvault CreateCredential (history: 10)",
        false,
    )
    .await;
    rows.push(row);
    let (plain, hist) = (Arc::new(plain), Arc::new(hist));
    let before = dir_size(dir);
    let started = Instant::now();
    let rounds = 9;
    for round in 0..rounds {
        let tasks: Vec<_> = hist
            .chunks(hist.len().div_ceil(16).max(1))
            .enumerate()
            .map(|(w, chunk)| {
                let mut c = main.vaults[w % main.vaults.len()].clone();
                let chunk = chunk.to_vec();
                tokio::spawn(async move {
                    for (i, id) in chunk.into_iter().enumerate() {
                        let n = (round * 1_000_000 + w * 10_000 + i) as u64;
                        c.update_credential(rotation(id, n))
                            .await
                            .expect("rotation");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("rotation task");
        }
    }
    let after = dir_size(dir);
    let versions = (rounds * hist.len()) as u64;
    eprintln!(
        "history: {versions} versions added in {:.1?}; data dir {:.1} -> {:.1} MB: {} bytes per version (sled's log, before compaction; the erasable key file holds 40 of them)",
        started.elapsed(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) / versions.max(1)
    );
    for &c in &args.concurrency {
        for (label, ids) in [("none", &plain), ("10 versions", &hist)] {
            rows.push(
                load(
                    &format!("hot GetCredentialHeaders (history: {label})"),
                    c,
                    args.warmup,
                    args.duration,
                    hot_op(&main.vaults, ids),
                    main.server.pid(),
                )
                .await,
            );
        }
    }
    for (label, ids) in [("none", &plain), ("10 versions", &hist)] {
        rows.push(
            load(
                &format!("rotate UpdateCredential (history: {label})"),
                16,
                args.warmup,
                args.duration,
                rotate_op(&main.vaults, ids),
                main.server.pid(),
            )
            .await,
        );
    }
}

/// Health/Check of the whole server over `chans`: the floor of any RPC.
pub(super) fn health_op(chans: &[Channel]) -> Op {
    let health: Vec<HealthClient<Channel>> = chans
        .iter()
        .map(|ch| HealthClient::new(ch.clone()))
        .collect();
    Arc::new(move |w| {
        let mut h = health[w % health.len()].clone();
        Box::pin(async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
        })
    })
}

/// OpenBao's KV v2 read of a random one of `n` secrets.
pub(super) fn bao_op(bao: &Bao, n: usize) -> Op {
    let (http, url) = (bao.http.clone(), bao.url.clone());
    Arc::new(move |_| {
        let (http, url) = (http.clone(), url.clone());
        let i = rand::thread_rng().gen_range(0..n);
        Box::pin(async move {
            match http
                .get(format!("{url}/v1/secret/data/bench-{i:06}"))
                .header("X-Vault-Token", BAO_TOKEN)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        })
    })
}

/// Seeds `args.scale_credentials` into `dir`, restarts on it, and measures the
/// cold start to SERVING, RSS before and after a full listing, the data size
/// and the listing's time.
pub(super) async fn scale_figures(
    args: &Args,
    dir: &Path,
    token: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let start = || {
        Server::start(
            &args.server_bin,
            dir,
            token,
            &args.server_log_level,
            None,
            &args.server_arg,
        )
    };
    let first = start().await;
    let scale_vaults = vault_clients(&channels(&first.addr, args.channels).await, token);
    let (_, scale_write) = seed(
        &scale_vaults,
        args.scale_credentials,
        "scale",
        "credvault CreateCredential",
    )
    .await;
    eprintln!(
        "scale: seeded {} credentials at {:.0}/s",
        args.scale_credentials, scale_write.rps
    );
    first.stop().await;
    let cold = start().await;
    let cold_rss = cold.pid().and_then(rss_mb);
    let mut lister = vault_clients(&[connect(&cold.addr).await], token).remove(0);
    let listed_at = Instant::now();
    let (mut listed, mut page_token) = (0usize, String::new());
    loop {
        let page = lister
            .list_credentials(api::ListCredentialsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        listed += page.credentials.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let list_took = listed_at.elapsed();
    let rss_after_list = cold.pid().and_then(rss_mb);
    let data_bytes = dir_size(&dir.join("data"));
    let cold_start = cold.started;
    cold.stop().await;
    assert_eq!(
        listed, args.scale_credentials,
        "the listing saw every credential"
    );
    let mut scale = serde_json::Map::new();
    scale.insert("credentials".into(), json!(args.scale_credentials));
    scale.insert(
        "cold_start_to_serving_ms".into(),
        json!(cold_start.as_secs_f64() * 1000.0),
    );
    scale.insert("rss_after_start_mb".into(), json!(cold_rss));
    scale.insert("rss_after_full_list_mb".into(), json!(rss_after_list));
    scale.insert("data_dir_mb".into(), json!(data_bytes as f64 / 1_048_576.0));
    scale.insert(
        "list_all_ms".into(),
        json!(list_took.as_secs_f64() * 1000.0),
    );
    scale.insert("listed".into(), json!(listed));
    scale.insert("create_rps_c16".into(), json!(scale_write.rps));
    scale
}

/// GetCredentialHeaders for a random one of `ids`, spread over `vaults`.
pub(super) fn hot_op(vaults: &[Vault], ids: &Arc<Vec<String>>) -> Op {
    let (vaults, ids) = (vaults.to_vec(), Arc::clone(ids));
    Arc::new(move |w| {
        let mut v = vaults[w % vaults.len()].clone();
        let id = ids[rand::thread_rng().gen_range(0..ids.len())].clone();
        Box::pin(async move {
            v.get_credential_headers(api::GetCredentialHeadersRequest {
                r#ref: Some(get_credential_headers_request::Ref::Id(id)),
            })
            .await
            .is_ok_and(|r| r.into_inner().headers.len() == 3)
        })
    })
}
