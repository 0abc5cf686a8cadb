//! A fake Fleetio API served over real HTTP on loopback.

use super::*;

/// What the fake Fleetio saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub account_token: Option<String>,
    pub api_version: Option<String>,
    pub user_agent: Option<String>,
}

/// How the fake answers for one API key.
#[derive(Clone)]
pub enum Behaviour {
    /// A working key with these account tokens (listed as `{"records": [...]}` or a bare array).
    Accounts { tokens: Vec<String>, bare: bool },
    /// users/me answers this status (with `Retry-After` for 429).
    Status(u16),
    /// users/me answers 200 only after this delay.
    Slow(Duration),
    /// users/me answers 302 to this URL.
    Redirect(String),
}

/// A local HTTP server that behaves like Fleetio's API for the keys it knows.
pub struct FakeFleetio {
    pub base_url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    keys: Arc<Mutex<HashMap<String, Behaviour>>>,
    _task: JoinHandle<()>,
}

#[derive(Clone)]
struct FakeState {
    keys: Arc<Mutex<HashMap<String, Behaviour>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn header(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl FakeFleetio {
    pub async fn start(keys: Vec<(&str, Behaviour)>) -> Self {
        use axum::http::{HeaderMap, StatusCode, Uri};
        use axum::response::{IntoResponse, Response};

        let state = FakeState {
            keys: Arc::new(Mutex::new(
                keys.into_iter().map(|(k, b)| (k.to_owned(), b)).collect(),
            )),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        async fn handle(
            axum::extract::State(state): axum::extract::State<FakeState>,
            uri: Uri,
            headers: HeaderMap,
        ) -> Response {
            let seen = Seen {
                path: uri.path().to_owned(),
                authorization: header(&headers, "authorization"),
                account_token: header(&headers, "account-token"),
                api_version: header(&headers, "x-api-version"),
                user_agent: header(&headers, "user-agent"),
            };
            state.seen.lock().unwrap().push(seen.clone());
            let behaviour = seen
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Token "))
                .and_then(|k| state.keys.lock().unwrap().get(k).cloned());
            let Some(behaviour) = behaviour else {
                return (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#).into_response();
            };
            match (uri.path(), behaviour) {
                ("/api/v1/users/me", Behaviour::Accounts { tokens, .. }) => {
                    match seen.account_token {
                        Some(t) if tokens.contains(&t) => {
                            (StatusCode::OK, r#"{"id":1,"email":"ops@example.com"}"#)
                                .into_response()
                        }
                        _ => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#)
                            .into_response(),
                    }
                }
                ("/api/v1/users/me", Behaviour::Status(code)) => {
                    let code = StatusCode::from_u16(code).unwrap();
                    if code == StatusCode::TOO_MANY_REQUESTS {
                        (code, [("retry-after", "7")], "slow down").into_response()
                    } else {
                        (code, "{}").into_response()
                    }
                }
                ("/api/v1/users/me", Behaviour::Redirect(to)) => {
                    (StatusCode::FOUND, [("location", to)], "").into_response()
                }
                ("/api/v1/users/me", Behaviour::Slow(delay)) => {
                    tokio::time::sleep(delay).await;
                    (StatusCode::OK, "{}").into_response()
                }
                ("/api/v1/accounts", Behaviour::Accounts { tokens, bare }) => {
                    let list: Vec<_> = tokens
                        .iter()
                        .enumerate()
                        .map(|(i, t)| serde_json::json!({"id": i, "name": format!("account {i}"), "token": t}))
                        .collect();
                    let body = if bare {
                        serde_json::json!(list)
                    } else {
                        serde_json::json!({"records": list})
                    };
                    axum::Json(body).into_response()
                }
                _ => (StatusCode::NOT_FOUND, "not found").into_response(),
            }
        }
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeFleetio {
            base_url: format!("http://{addr}/api"),
            seen: state.seen,
            keys: state.keys,
            _task: task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Changes (or adds) how the fake answers for `key`.
    pub fn set(&self, key: &str, behaviour: Behaviour) {
        self.keys.lock().unwrap().insert(key.to_owned(), behaviour);
    }

    /// Forgets `key`: Fleetio now rejects it.
    pub fn revoke(&self, key: &str) {
        self.keys.lock().unwrap().remove(key);
    }

    /// How many users/me checks the fake saw for `key`.
    pub fn checks_of(&self, key: &str) -> usize {
        let auth = format!("Token {key}");
        self.seen()
            .iter()
            .filter(|s| s.path == "/api/v1/users/me" && s.authorization.as_deref() == Some(&*auth))
            .count()
    }
}

/// An address nothing listens on.
pub async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/api")
}
