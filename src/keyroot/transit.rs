//! OpenBao / Vault Transit as a key root: a named Transit key encrypts and
//! decrypts master keys; credvault logs in with a token file or AppRole, renews
//! its token, and rewraps its sealed keys when the Transit key is rotated.

use std::path::PathBuf;
use std::time::Duration;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::RootError;
use crate::crypto::KEY_LEN;

/// The root's name in sealed entries and messages.
pub const NAME: &str = "transit";
/// The largest answer read from OpenBao (its answers here are a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How credvault authenticates to OpenBao / Vault.
#[derive(Clone, Debug)]
pub enum TransitAuth {
    /// A token read from this file (read again when a call is refused, so a
    /// rotated token file is picked up).
    TokenFile(PathBuf),
    /// AppRole: the role id, and a file holding the secret id.
    AppRole {
        /// The auth mount, `approle` by default.
        mount: String,
        /// The role id (not a secret on its own).
        role_id: String,
        /// A file holding the secret id.
        secret_id_file: PathBuf,
    },
}

/// Where the Transit key is and how to reach it.
#[derive(Clone, Debug)]
pub struct TransitSettings {
    /// The server's address, e.g. `https://openbao.internal:8200`.
    pub address: String,
    /// The Transit secrets engine's mount path, `transit` by default.
    pub mount: String,
    /// The name of the Transit key that seals master keys.
    pub key: String,
    /// How to log in.
    pub auth: TransitAuth,
    /// A PEM CA bundle the server's certificate must chain to (else the web roots).
    pub ca_file: Option<PathBuf>,
    /// The longest wait for one call.
    pub timeout: Duration,
}

/// A Transit client with its token.
pub struct Transit {
    settings: TransitSettings,
    http: reqwest::Client,
    token: Mutex<Option<Zeroizing<String>>>,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("address", &self.settings.address)
            .field("mount", &self.settings.mount)
            .field("key", &self.settings.key)
            .finish_non_exhaustive()
    }
}

/// The version a Transit ciphertext (`vault:vN:...`) was made with.
pub fn ciphertext_version(ciphertext: &str) -> Option<u64> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    rest.split_once(':')?.0.parse().ok()
}

fn unreachable(why: impl std::fmt::Display) -> RootError {
    RootError::Unreachable {
        root: NAME,
        why: why.to_string(),
    }
}

fn fatal(why: impl std::fmt::Display) -> RootError {
    RootError::Fatal {
        root: NAME,
        why: why.to_string(),
    }
}

/// The `errors` of an OpenBao answer, joined (they never hold the plaintext).
fn errors_of(body: &Value) -> String {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "no reason given".to_owned())
}

/// The text at `pointer` (e.g. `/data/ciphertext`) of an answer to `what`.
fn text_at<'a>(body: &'a Value, pointer: &str, what: &str) -> Result<&'a str, RootError> {
    let field = pointer.rsplit('/').next().unwrap_or(pointer);
    body.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| fatal(format!("{what}: no {field} in the answer")))
}

/// An answer's JSON body, read to at most [`MAX_ANSWER_BYTES`] (null when it is not JSON).
async fn read_json(mut answer: reqwest::Response) -> Result<Value, RootError> {
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = answer.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(unreachable(format!(
                "an answer of over {MAX_ANSWER_BYTES} bytes: not OpenBao's"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

impl Transit {
    /// A client for `settings` (nothing is called yet).
    pub fn new(settings: TransitSettings) -> Result<Self, RootError> {
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| fatal(format!("cannot read {}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fatal(format!("{} is not a PEM bundle: {e}", path.display())))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(fatal)?;
        if let Ok(url) = reqwest::Url::parse(&settings.address) {
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if url.scheme() == "http" && !loopback {
                tracing::warn!(
                    address = %settings.address,
                    "the Transit address is plain http: the token and the master key's plaintext cross the network unencrypted; use https"
                );
            }
        } else {
            return Err(fatal(format!("{:?} is not a URL", settings.address)));
        }
        Ok(Transit {
            settings,
            http,
            token: Mutex::new(None),
        })
    }

    /// The Transit key's name.
    pub fn key_name(&self) -> &str {
        &self.settings.key
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.settings.address.trim_end_matches('/'))
    }

    /// Logs in: reads the token file, or exchanges the AppRole's ids for a token.
    async fn login(&self) -> Result<Zeroizing<String>, RootError> {
        match &self.settings.auth {
            TransitAuth::TokenFile(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    fatal(format!(
                        "cannot read the token file {}: {e}",
                        path.display()
                    ))
                })?);
                let token = text.trim();
                if token.is_empty() {
                    return Err(fatal(format!("the token file {} is empty", path.display())));
                }
                Ok(Zeroizing::new(token.to_owned()))
            }
            TransitAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret_id =
                    Zeroizing::new(std::fs::read_to_string(secret_id_file).map_err(|e| {
                        fatal(format!(
                            "cannot read the AppRole secret id file {}: {e}",
                            secret_id_file.display()
                        ))
                    })?);
                let body = json!({"role_id": role_id, "secret_id": secret_id.trim()});
                let answer = self
                    .http
                    .post(self.url(&format!("auth/{mount}/login")))
                    .json(&body)
                    .send()
                    .await
                    .map_err(unreachable)?;
                let status = answer.status();
                let body = read_json(answer).await?;
                if status.is_server_error() {
                    return Err(unreachable(format!(
                        "AppRole login: {status}: {}",
                        errors_of(&body)
                    )));
                }
                if !status.is_success() {
                    return Err(RootError::Denied {
                        root: NAME,
                        why: format!("AppRole login refused ({status}): {}", errors_of(&body)),
                    });
                }
                text_at(&body, "/auth/client_token", "the AppRole login")
                    .map(|t| Zeroizing::new(t.to_owned()))
            }
        }
    }

    /// One call with the token; a refusal (403) logs in again once and retries.
    /// A refusal that remains is told apart: a token that OpenBao no longer knows
    /// (revoked, expired) is [`RootError::Denied`]; a valid token whose policy does
    /// not reach this path (a wrong key name, a policy too narrow) is fatal.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, RootError> {
        let mut retried = false;
        loop {
            let token = {
                let mut held = self.token.lock().await;
                if held.is_none() {
                    *held = Some(self.login().await?);
                }
                held.clone().expect("set above")
            };
            let (status, answer) = self
                .send(method.clone(), path, body.as_ref(), &token)
                .await?;
            match status {
                s if s.is_success() => return Ok(answer),
                StatusCode::FORBIDDEN if !retried => {
                    retried = true;
                    *self.token.lock().await = None;
                }
                StatusCode::FORBIDDEN => {
                    let (whoami, _) = self
                        .send(Method::GET, "auth/token/lookup-self", None, &token)
                        .await?;
                    if path != "auth/token/lookup-self" && whoami.is_success() {
                        return Err(fatal(format!(
                            "permission denied on {path}: the token is valid, but its policy does not allow this path; is the Transit key name ({:?}) or mount ({:?}) wrong? ({})",
                            self.settings.key,
                            self.settings.mount,
                            errors_of(&answer)
                        )));
                    }
                    return Err(RootError::Denied {
                        root: NAME,
                        why: format!(
                            "permission denied on {path}: the token is revoked or expired ({})",
                            errors_of(&answer)
                        ),
                    });
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    return Err(unreachable(format!("{path}: {s}: {}", errors_of(&answer))))
                }
                // A standby of an HA cluster redirects to the active node; redirects
                // are not followed (the token would go where the answer says).
                s if s.is_redirection() => {
                    return Err(unreachable(format!(
                        "{path}: {s}: a redirect, not followed (a standby node? point --transit-address at the active node or its load balancer)"
                    )))
                }
                s => return Err(fatal(format!("{path}: {s}: {}", errors_of(&answer)))),
            }
        }
    }

    /// Sends one request with `token`: its status and JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: &str,
    ) -> Result<(StatusCode, Value), RootError> {
        let mut value = reqwest::header::HeaderValue::from_str(token)
            .map_err(|_| fatal("the token holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("X-Vault-Token", value);
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = request.send().await.map_err(unreachable)?;
        let status = answer.status();
        Ok((status, read_json(answer).await?))
    }

    /// Checks that the Transit key exists and may be used: its latest version.
    pub async fn key_version(&self) -> Result<u64, RootError> {
        let path = format!("{}/keys/{}", self.settings.mount, self.settings.key);
        match self.call(Method::GET, &path, None).await {
            Ok(body) => body
                .pointer("/data/latest_version")
                .and_then(Value::as_u64)
                .ok_or_else(|| fatal(format!("{path}: no latest_version in the answer"))),
            Err(RootError::Fatal { why, .. }) if why.contains("404") => Err(fatal(format!(
                "there is no Transit key {:?} at mount {:?} of {} (create it with `bao write -f {}/keys/{}`)",
                self.settings.key,
                self.settings.mount,
                self.settings.address,
                self.settings.mount,
                self.settings.key
            ))),
            Err(e) => Err(e),
        }
    }

    /// Encrypts a master key's bytes: the `vault:vN:...` ciphertext.
    pub async fn seal(&self, raw: &[u8; KEY_LEN]) -> Result<String, RootError> {
        let plaintext = Zeroizing::new(B64.encode(raw));
        let path = format!("{}/encrypt/{}", self.settings.mount, self.settings.key);
        let body = self
            .call(
                Method::POST,
                &path,
                Some(json!({ "plaintext": plaintext.as_str() })),
            )
            .await?;
        text_at(&body, "/data/ciphertext", &path).map(str::to_owned)
    }

    /// The Transit engine's mount path.
    pub fn mount(&self) -> &str {
        &self.settings.mount
    }

    /// Decrypts a master key's ciphertext with the Transit key `key` at `mount`.
    pub async fn unseal(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, RootError> {
        let path = format!("{mount}/decrypt/{key}");
        let body = self
            .call(
                Method::POST,
                &path,
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await?;
        let text = text_at(&body, "/data/plaintext", &path)?;
        let bytes = Zeroizing::new(
            B64.decode(text)
                .map_err(|_| fatal(format!("{path}: the plaintext is not base64")))?,
        );
        let raw: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| fatal(format!("{path}: the unsealed key is not {KEY_LEN} bytes")))?;
        Ok(Zeroizing::new(raw))
    }

    /// Rewraps a ciphertext of key `key` at `mount` to that key's latest version (the key bytes never leave OpenBao).
    pub async fn rewrap(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<String, RootError> {
        let path = format!("{mount}/rewrap/{key}");
        let body = self
            .call(
                Method::POST,
                &path,
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await?;
        text_at(&body, "/data/ciphertext", &path).map(str::to_owned)
    }

    /// Confirms the token is valid and renews it when it can be renewed.
    pub async fn renew(&self) -> Result<(), RootError> {
        let body = self
            .call(Method::GET, "auth/token/lookup-self", None)
            .await?;
        let renewable = body
            .pointer("/data/renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ttl = body
            .pointer("/data/ttl")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if renewable && ttl > 0 {
            self.call(Method::POST, "auth/token/renew-self", Some(json!({})))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions_are_read() {
        assert_eq!(ciphertext_version("vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version("vault:v12:abc"), Some(12));
        assert_eq!(ciphertext_version("vault:x:abc"), None);
        assert_eq!(ciphertext_version("abc"), None);
    }
}
