//! A randomized model test in the spirit of OpenBao's storage cross-tests: random
//! sequences of create, rotate, describe, delete, list and headers run against the
//! real server, on sled and on PostgreSQL, and are compared after every step with
//! a plain in-memory model. Part of the time the store fails one call in a few
//! (before passing it on, so a failed call changes nothing): every such failure
//! must reach the client as UNAVAILABLE, never as wrong data, and no acknowledged
//! write may be lost.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::common::faulty::{Faults, FaultyStore};
use crate::common::*;
use credvault::api;
use credvault::server::ServeError;
use proptest::prelude::*;
use tonic::Code;

const NAMES: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Create {
        name: usize,
        key: usize,
    },
    Rotate {
        name: usize,
        key: usize,
        stale: bool,
    },
    Describe {
        name: usize,
    },
    Delete {
        name: usize,
    },
    Headers {
        name: usize,
    },
    List,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES;
    prop_oneof![
        3 => (name.clone(), 0..3usize).prop_map(|(name, key)| Op::Create { name, key }),
        3 => (name.clone(), 0..3usize, proptest::bool::weighted(0.2))
            .prop_map(|(name, key, stale)| Op::Rotate { name, key, stale }),
        1 => name.clone().prop_map(|name| Op::Describe { name }),
        2 => name.clone().prop_map(|name| Op::Delete { name }),
        3 => name.prop_map(|name| Op::Headers { name }),
        1 => Just(Op::List),
    ]
}

/// What the model holds of a credential.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    key: usize,
    version: u64,
}

fn name(i: usize) -> String {
    format!("model-{i}")
}

fn api_key(k: usize) -> String {
    format!("key-model-{k:04}")
}

/// What the server answered, reduced to what the model can predict.
#[derive(Debug, PartialEq)]
enum Seen {
    Version(u64),
    Headers(String, u64),
    Names(Vec<(String, u64)>),
    Done,
    Code(Code),
}

fn seen<T>(r: Result<T, tonic::Status>, f: impl FnOnce(T) -> Seen) -> Seen {
    match r {
        Ok(v) => f(v),
        Err(s) => Seen::Code(s.code()),
    }
}

async fn list_all(client: &mut Client) -> Result<Vec<(String, u64)>, tonic::Status> {
    let page = client
        .list_credentials(api::ListCredentialsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out: Vec<_> = page
        .credentials
        .into_iter()
        .map(|c| (c.name, c.version))
        .collect();
    out.sort();
    Ok(out)
}

async fn apply(client: &mut Client, op: &Op, model: &BTreeMap<usize, Entry>) -> Seen {
    match *op {
        Op::Create { name: n, key } => seen(
            client
                .create_credential(api::CreateCredentialRequest {
                    name: name(n),
                    secret: Some(fleetio(&api_key(key), "acct", "")),
                    ..Default::default()
                })
                .await,
            |r| Seen::Version(r.into_inner().credential.unwrap().version),
        ),
        Op::Rotate {
            name: n,
            key,
            stale,
        } => {
            let mut request = rotation(&name(n), &api_key(key), "acct");
            request.expected_version =
                model
                    .get(&n)
                    .map(|e| if stale { e.version + 7 } else { e.version });
            seen(client.update_credential(request).await, |r| {
                Seen::Version(r.into_inner().credential.unwrap().version)
            })
        }
        Op::Describe { name: n } => seen(
            client
                .update_credential(api::UpdateCredentialRequest {
                    r#ref: Some(api::update_credential_request::Ref::Name(name(n))),
                    description: Some("described".into()),
                    ..Default::default()
                })
                .await,
            |r| Seen::Version(r.into_inner().credential.unwrap().version),
        ),
        Op::Delete { name: n } => seen(
            client
                .delete_credential(api::DeleteCredentialRequest {
                    force: false,
                    r#ref: Some(api::delete_credential_request::Ref::Name(name(n))),
                    expected_version: None,
                })
                .await,
            |_| Seen::Done,
        ),
        Op::Headers { name: n } => seen(
            client
                .get_credential_headers(headers_by_name(&name(n)))
                .await,
            |r| {
                let r = r.into_inner();
                Seen::Headers(r.headers[0].value.clone(), r.version)
            },
        ),
        Op::List => seen(list_all(client).await.map(Seen::Names), |s| s),
    }
}

/// What the model predicts, and the model after the operation.
fn predict(op: &Op, model: &mut BTreeMap<usize, Entry>) -> Seen {
    match *op {
        Op::Create { name, key } => {
            if model.contains_key(&name) {
                return Seen::Code(Code::AlreadyExists);
            }
            model.insert(name, Entry { key, version: 1 });
            Seen::Version(1)
        }
        Op::Rotate { name, key, stale } => match model.get_mut(&name) {
            None => Seen::Code(Code::NotFound),
            Some(_) if stale => Seen::Code(Code::Aborted),
            Some(e) => {
                e.key = key;
                e.version += 1;
                Seen::Version(e.version)
            }
        },
        Op::Describe { name } => match model.get_mut(&name) {
            None => Seen::Code(Code::NotFound),
            Some(e) => {
                e.version += 1;
                Seen::Version(e.version)
            }
        },
        Op::Delete { name } => match model.remove(&name) {
            None => Seen::Code(Code::NotFound),
            Some(_) => Seen::Done,
        },
        Op::Headers { name } => match model.get(&name) {
            None => Seen::Code(Code::NotFound),
            Some(e) => Seen::Headers(format!("Token {}", api_key(e.key)), e.version),
        },
        Op::List => Seen::Names(model.iter().map(|(n, e)| (name(*n), e.version)).collect()),
    }
}

/// The whole state as the server shows it, with faults off: every credential
/// the model holds, with its version and headers, and no other.
async fn check_state(client: &mut Client, model: &BTreeMap<usize, Entry>, step: usize) {
    let mut snapshot = model.clone();
    let listed = list_all(client).await.unwrap();
    assert_eq!(
        Seen::Names(listed),
        predict(&Op::List, &mut snapshot),
        "step {step}: the listing differs from the model"
    );
    for n in 0..NAMES {
        let got = apply(client, &Op::Headers { name: n }, model).await;
        assert_eq!(
            got,
            predict(&Op::Headers { name: n }, &mut snapshot),
            "step {step}: {} differs from the model",
            name(n)
        );
    }
}

/// Runs `ops`; how many faults were injected, and how many calls answered UNAVAILABLE.
async fn run_case(store: TestStore, ops: Vec<Op>, fail_every: u64) -> (u64, usize) {
    let faults = Arc::new(Faults::default());
    faults.every.store(fail_every, Ordering::Relaxed);
    let for_store = Arc::clone(&faults);
    let server = TestServer::start_with_store(
        Options {
            store,
            ..Options::default()
        },
        move |data_dir, database_url| async move {
            let config = match database_url {
                None => credvault::store::StoreConfig::Sled { dir: data_dir },
                Some(url) => {
                    credvault::store::StoreConfig::Postgres(credvault::store::PostgresSettings {
                        url: url.into(),
                        pool: Default::default(),
                        startup_wait: std::time::Duration::ZERO,
                    })
                }
            };
            let store = credvault::store::open(&config)
                .await
                .map_err(ServeError::Store)?;
            Ok(FaultyStore {
                inner: Arc::new(store),
                faults: for_store,
            })
        },
    )
    .await;
    let mut client = server.admin().await;
    let mut model = BTreeMap::new();
    let mut unavailable = 0;
    for (step, op) in ops.iter().enumerate() {
        faults.on.store(true, Ordering::Relaxed);
        let got = apply(&mut client, op, &model).await;
        faults.on.store(false, Ordering::Relaxed);
        if got == Seen::Code(Code::Unavailable) {
            assert!(
                fail_every > 0,
                "step {step}: {op:?} answered UNAVAILABLE without an injected fault"
            );
            // A failed call changed nothing: the model stays.
            unavailable += 1;
        } else {
            let want = predict(op, &mut model);
            assert_eq!(got, want, "step {step}: {op:?}");
        }
        check_state(&mut client, &model, step).await;
    }
    let injected = faults.injected.load(Ordering::Relaxed);
    drop(client);
    server.stop().await.unwrap();
    (injected, unavailable)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sled_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..25), faulty in proptest::bool::ANY) {
        runtime().block_on(run_case(TestStore::Sled, ops, if faulty { 3 } else { 0 }));
    }

    #[test]
    fn postgres_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..25), faulty in proptest::bool::ANY) {
        runtime().block_on(run_case(TestStore::Postgres, ops, if faulty { 3 } else { 0 }));
    }
}

/// The faults really happen and really reach the client: one fixed sequence on
/// each store with a fault every other store call.
#[test]
fn injected_faults_surface_as_unavailable() {
    let ops: Vec<Op> = (0..NAMES)
        .flat_map(|n| {
            [
                Op::Create { name: n, key: n },
                Op::Headers { name: n },
                Op::Rotate {
                    name: n,
                    key: n + 1,
                    stale: false,
                },
                Op::List,
                Op::Delete { name: n },
            ]
        })
        .collect();
    for store in [TestStore::Sled, TestStore::Postgres] {
        let (injected, unavailable) = runtime().block_on(run_case(store, ops.clone(), 2));
        println!("{store:?}: {injected} faults injected, {unavailable} calls answered UNAVAILABLE");
        assert!(injected >= 5, "{store:?}: only {injected} faults injected");
        assert!(
            unavailable >= 5,
            "{store:?}: only {unavailable} calls saw a fault"
        );
    }
}
