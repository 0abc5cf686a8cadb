//! A fake API of any provider, served over real HTTP on loopback: the test
//! says how it answers each request.

use super::*;

/// One request the fake saw: method, path and headers (names in lowercase).
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

impl Req {
    /// The value of header `name` (lowercase), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// How the fake answers: a status, response headers and a body (`{}` unless told).
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            body: "{}".into(),
        }
    }

    pub fn with_body(mut self, body: &str) -> Self {
        body.clone_into(&mut self.body);
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Answerer = Arc<dyn Fn(&Req) -> Answer + Send + Sync>;

/// A local HTTP server answering as the test's function says.
pub struct FakeApi {
    pub base_url: String,
    seen: Arc<Mutex<Vec<Req>>>,
    _task: JoinHandle<()>,
}

impl FakeApi {
    pub async fn start(answer: impl Fn(&Req) -> Answer + Send + Sync + 'static) -> Self {
        use axum::response::IntoResponse;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state: (Answerer, Arc<Mutex<Vec<Req>>>) = (Arc::new(answer), Arc::clone(&seen));
        async fn handle(
            axum::extract::State((answer, seen)): axum::extract::State<(
                Answerer,
                Arc<Mutex<Vec<Req>>>,
            )>,
            method: axum::http::Method,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
        ) -> axum::response::Response {
            let req = Req {
                method: method.to_string(),
                path: uri
                    .path_and_query()
                    .map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
                headers: headers
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
            };
            let out = answer(&req);
            seen.lock().unwrap().push(req);
            let mut response = (
                axum::http::StatusCode::from_u16(out.status).unwrap(),
                out.body,
            )
                .into_response();
            for (name, value) in out.headers {
                response.headers_mut().insert(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            response
        }
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApi {
            base_url: format!("http://{addr}"),
            seen,
            _task: task,
        }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}
