//! Small tools: mint a caller's token, and the health probe (`healthcheck`) for
//! images without a shell.

use super::*;

#[derive(Debug, Args)]
pub(super) struct HealthcheckArgs {
    /// The server's gRPC address, host:port.
    #[arg(
        long,
        env = "CREDVAULT_HEALTHCHECK_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub(super) addr: String,
    /// The service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    pub(super) service: String,
    /// Longest wait for the connection and the answer together.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(super) timeout: Duration,
    #[command(flatten)]
    pub(super) tls: ClientTls,
}

/// How a client command reaches a server: plaintext, or TLS.
#[derive(Debug, Args)]
pub(super) struct ClientTls {
    /// Connect with TLS (public roots, or --ca-file).
    #[arg(long)]
    pub(super) tls: bool,
    /// PEM file of the CA that signed the server's certificate (implies --tls).
    #[arg(long)]
    pub(super) ca_file: Option<PathBuf>,
    /// The name to expect in the server's certificate, when it differs from the host in the address.
    #[arg(long)]
    pub(super) tls_server_name: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    /// The caller's name, as logs will show it.
    #[arg(long)]
    pub(super) name: String,
    /// Comma-separated permissions: credentials.read, credentials.write, credentials.verify,
    /// headers.read, audit.read, keys.manage, backup.read.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(super) permissions: Vec<String>,
}

pub(super) fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let name = args.name.trim();
    if name.is_empty() {
        return Err(anyhow!("--name must not be empty"));
    }
    let permissions = args
        .permissions
        .iter()
        .map(|p| Permission::parse(p.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let token = auth::mint_token();
    println!("# token for {name:?} (shown once; give it to the caller, store it nowhere else):");
    println!("# {}", token.as_str());
    println!("{}", auth::callers_entry(name, &token, &permissions));
    Ok(())
}

pub(super) fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    let endpoint = args
        .tls
        .endpoint(&args.addr)?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let status = runtime()?.block_on(async {
        let ask = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| anyhow!("cannot connect to {}: {e}", args.addr))?;
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: args.service.clone(),
                })
                .await
                .map(|r| r.into_inner().status())
                .map_err(|s| anyhow!("health check failed: {:?}: {}", s.code(), s.message()))
        };
        tokio::time::timeout(args.timeout, ask)
            .await
            .map_err(|_| anyhow!("no answer from {} within {:?}", args.addr, args.timeout))?
    })?;
    let name = if args.service.is_empty() {
        "the server"
    } else {
        args.service.as_str()
    };
    if status == ServingStatus::Serving {
        println!("SERVING");
        Ok(())
    } else {
        Err(anyhow!("{name} is {}", status.as_str_name()))
    }
}

impl ClientTls {
    /// A gRPC endpoint for `addr` (host:port), with TLS if asked or if a CA file is given.
    pub(super) fn endpoint(&self, addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let tls = self.tls || self.ca_file.is_some();
        let url = format!("{}://{addr}", if tls { "https" } else { "http" });
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| anyhow!("address {addr:?} is not a host:port: {e}"))?;
        if tls {
            let mut config = ClientTlsConfig::new().with_webpki_roots();
            if let Some(file) = &self.ca_file {
                let pem = std::fs::read(file)
                    .map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(name) = &self.tls_server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| anyhow!("bad tls settings: {e}"))?;
        }
        Ok(endpoint)
    }
}

/// `pkcs11-keygen`: which token, which label, and the PIN.
#[derive(Debug, Args)]
pub(super) struct Pkcs11KeygenArgs {
    /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, env = "CREDVAULT_PKCS11_MODULE")]
    module: PathBuf,
    /// The label of the token to make the key in.
    #[arg(
        long,
        env = "CREDVAULT_PKCS11_TOKEN_LABEL",
        default_value = "credvault"
    )]
    token_label: String,
    /// The new key's label.
    #[arg(
        long,
        env = "CREDVAULT_PKCS11_KEY_LABEL",
        default_value = "credvault-root"
    )]
    key_label: String,
    /// A file holding the token's user PIN (or set CREDVAULT_PKCS11_PIN).
    #[arg(long, env = "CREDVAULT_PKCS11_PIN_FILE")]
    pin_file: Option<PathBuf>,
}

/// Makes the HSM's sealing key; refuses when one has that label already.
pub(super) fn pkcs11_keygen(args: &Pkcs11KeygenArgs) -> anyhow::Result<()> {
    let hsm = keyroot::Hsm::new(keyroot::Pkcs11Settings {
        module: args.module.clone(),
        token_label: args.token_label.clone(),
        key_label: args.key_label.clone(),
        pin: pkcs11_pin(args.pin_file.as_deref())?,
    });
    hsm.generate()?;
    println!(
        "made AES-256 key {:?} in token {:?} (sensitive, not extractable)",
        args.key_label, args.token_label
    );
    Ok(())
}
