//! Where the master keys come from: the key file or the environment, and the key
//! roots (OpenBao/Vault Transit, a PKCS#11 HSM), as `serve` and the offline
//! commands take them.

use super::*;

/// Where the master keys come from.
#[derive(Clone, Debug, Args)]
pub(super) struct KeyArgs {
    /// The keyring: a file with one base64 master key or `id = base64` lines, or a
    /// directory of key files named `<id>` or `<id>.key` (or set CREDVAULT_MASTER_KEY
    /// to a key file's text). Re-read on SIGHUP and when it changes.
    #[arg(long, env = "CREDVAULT_MASTER_KEY_FILE")]
    pub(super) master_key_file: Option<PathBuf>,
    /// The key id that wraps new data keys [default: the last key of the file, or
    /// the last file name of the directory].
    #[arg(long, env = "CREDVAULT_ACTIVE_KEY_ID")]
    pub(super) active_key_id: Option<String>,
    #[command(flatten)]
    pub(super) roots: KeyRootArgs,
}

/// Which key root seals the active master key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum ProviderArg {
    /// The key file or CREDVAULT_MASTER_KEY (the master key lies on the host).
    File,
    /// OpenBao / Vault Transit (--transit-*): the store keeps the master key sealed by it.
    Transit,
    /// A PKCS#11 HSM (--pkcs11-*): the store keeps the master key sealed by it.
    Pkcs11,
}

/// Key roots: OpenBao/Vault Transit and PKCS#11 HSMs (docs/key-roots.md).
#[derive(Clone, Debug, Args)]
pub(super) struct KeyRootArgs {
    /// Which root seals the master key that wraps new data keys. With transit or
    /// pkcs11 the first start makes a master key, seals it by the root and keeps it
    /// sealed in the store; the key file, if given too, keeps opening older data
    /// until RewrapCredentials has moved it.
    #[arg(
        long,
        env = "CREDVAULT_KEY_PROVIDER",
        value_enum,
        default_value = "file"
    )]
    pub(super) key_provider: ProviderArg,
    /// OpenBao / Vault address, e.g. https://openbao.internal:8200 (configures the Transit root).
    #[arg(long, env = "CREDVAULT_TRANSIT_ADDRESS")]
    pub(super) transit_address: Option<String>,
    /// The Transit secrets engine's mount path.
    #[arg(long, env = "CREDVAULT_TRANSIT_MOUNT", default_value = "transit")]
    pub(super) transit_mount: String,
    /// The Transit key that seals master keys.
    #[arg(long, env = "CREDVAULT_TRANSIT_KEY", default_value = "credvault")]
    pub(super) transit_key: String,
    /// A file holding the OpenBao token (read again when a call is refused).
    #[arg(long, env = "CREDVAULT_TRANSIT_TOKEN_FILE")]
    pub(super) transit_token_file: Option<PathBuf>,
    /// AppRole login instead of a token file: the role id.
    #[arg(
        long,
        env = "CREDVAULT_TRANSIT_APPROLE_ROLE_ID",
        conflicts_with = "transit_token_file",
        requires = "transit_approle_secret_id_file"
    )]
    pub(super) transit_approle_role_id: Option<String>,
    /// AppRole login: a file holding the secret id.
    #[arg(
        long,
        env = "CREDVAULT_TRANSIT_APPROLE_SECRET_ID_FILE",
        requires = "transit_approle_role_id"
    )]
    pub(super) transit_approle_secret_id_file: Option<PathBuf>,
    /// AppRole's auth mount path.
    #[arg(
        long,
        env = "CREDVAULT_TRANSIT_APPROLE_MOUNT",
        default_value = "approle"
    )]
    pub(super) transit_approle_mount: String,
    /// PEM CA bundle OpenBao's certificate must chain to (default: the web roots).
    #[arg(long, env = "CREDVAULT_TRANSIT_CA_FILE")]
    pub(super) transit_ca_file: Option<PathBuf>,
    /// Longest wait for one call to OpenBao.
    #[arg(long, env = "CREDVAULT_TRANSIT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) transit_timeout: Duration,
    /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so (configures the HSM root).
    #[arg(long, env = "CREDVAULT_PKCS11_MODULE")]
    pub(super) pkcs11_module: Option<PathBuf>,
    /// The label of the token holding the key.
    #[arg(
        long,
        env = "CREDVAULT_PKCS11_TOKEN_LABEL",
        default_value = "credvault"
    )]
    pub(super) pkcs11_token_label: String,
    /// The label of the AES key that seals master keys (make it with `credvault pkcs11-keygen`).
    #[arg(
        long,
        env = "CREDVAULT_PKCS11_KEY_LABEL",
        default_value = "credvault-root"
    )]
    pub(super) pkcs11_key_label: String,
    /// A file holding the token's user PIN (or set CREDVAULT_PKCS11_PIN).
    #[arg(long, env = "CREDVAULT_PKCS11_PIN_FILE")]
    pub(super) pkcs11_pin_file: Option<PathBuf>,
    /// How often the roots are checked: the token renewed, Transit key versions followed.
    #[arg(long, env = "CREDVAULT_KEY_ROOT_CHECK_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(super) key_root_check_interval: Duration,
    /// Readiness and liveness turn NOT_SERVING when the roots have not confirmed the
    /// master keys for this long (a supervisor's restart then drops the keys held in
    /// memory); 0s: the keys serve for as long as the process lives.
    #[arg(long, env = "CREDVAULT_KEY_ROOT_MAX_UNCONFIRMED", default_value = "0s", value_parser = humantime::parse_duration)]
    pub(super) key_root_max_unconfirmed: Duration,
}

/// Environment variable that may hold the PKCS#11 user PIN.
const PKCS11_PIN_ENV: &str = "CREDVAULT_PKCS11_PIN";

/// The token's user PIN: read from `file` (trimmed), else from [`PKCS11_PIN_ENV`];
/// every copy wiped on drop.
pub(super) fn pkcs11_pin(
    file: Option<&std::path::Path>,
) -> anyhow::Result<std::sync::Arc<zeroize::Zeroizing<String>>> {
    let pin = match file {
        Some(file) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(file)
                    .map_err(|e| anyhow!("cannot read the PIN file {}: {e}", file.display()))?,
            );
            zeroize::Zeroizing::new(text.trim().to_owned())
        }
        None => zeroize::Zeroizing::new(std::env::var(PKCS11_PIN_ENV).map_err(|_| {
            anyhow!("the token's PIN is needed: a PIN file (--pkcs11-pin-file) or {PKCS11_PIN_ENV}")
        })?),
    };
    Ok(std::sync::Arc::new(pin))
}

impl KeyRootArgs {
    /// The configured roots, if any root is configured.
    pub(super) fn roots(&self) -> anyhow::Result<Option<keyroot::Roots>> {
        use keyroot::Provider;
        let transit = match &self.transit_address {
            Some(address) => {
                let auth = match (&self.transit_token_file, &self.transit_approle_role_id, &self.transit_approle_secret_id_file) {
                    (Some(file), _, _) => keyroot::TransitAuth::TokenFile(file.clone()),
                    (None, Some(role_id), Some(secret_id_file)) => keyroot::TransitAuth::AppRole {
                        mount: self.transit_approle_mount.clone(),
                        role_id: role_id.clone(),
                        secret_id_file: secret_id_file.clone(),
                    },
                    _ => return Err(anyhow!("--transit-address needs --transit-token-file, or --transit-approle-role-id with --transit-approle-secret-id-file")),
                };
                Some(keyroot::Transit::new(keyroot::TransitSettings {
                    address: address.clone(),
                    mount: self.transit_mount.clone(),
                    key: self.transit_key.clone(),
                    auth,
                    ca_file: self.transit_ca_file.clone(),
                    timeout: self.transit_timeout,
                })?)
            }
            None => None,
        };
        let pkcs11 = match &self.pkcs11_module {
            Some(module) => {
                let pin = pkcs11_pin(self.pkcs11_pin_file.as_deref())?;
                Some(keyroot::Hsm::new(keyroot::Pkcs11Settings {
                    module: module.clone(),
                    token_label: self.pkcs11_token_label.clone(),
                    key_label: self.pkcs11_key_label.clone(),
                    pin,
                }))
            }
            None => None,
        };
        let provider = match self.key_provider {
            ProviderArg::File => Provider::File,
            ProviderArg::Transit if transit.is_some() => Provider::Transit,
            ProviderArg::Pkcs11 if pkcs11.is_some() => Provider::Pkcs11,
            ProviderArg::Transit => {
                return Err(anyhow!("--key-provider transit needs --transit-address"))
            }
            ProviderArg::Pkcs11 => {
                return Err(anyhow!("--key-provider pkcs11 needs --pkcs11-module"))
            }
        };
        if transit.is_none() && pkcs11.is_none() {
            return Ok(None);
        }
        Ok(Some(keyroot::Roots::new(provider, transit, pkcs11)))
    }

    /// The roots with how the server watches them.
    pub(super) fn settings(&self) -> anyhow::Result<Option<config::KeyRootSettings>> {
        Ok(self.roots()?.map(|roots| config::KeyRootSettings {
            roots: std::sync::Arc::new(roots),
            check_interval: self.key_root_check_interval,
            max_unconfirmed: self.key_root_max_unconfirmed,
        }))
    }
}

impl KeyArgs {
    /// Reads the keyring from the environment or the key file (`fallback` when
    /// neither is given); none when a key root seals the active key and no file is given.
    pub(super) fn keyring(
        &self,
        fallback: Option<PathBuf>,
    ) -> anyhow::Result<(Option<Keyring>, Option<KeyringSource>)> {
        if self.roots.key_provider != ProviderArg::File && !self.file_given() {
            return Ok((None, None));
        }
        let (keyring, source) = config::resolve_keyring(
            self.master_key_file.as_deref(),
            self.active_key_id.as_deref(),
            fallback.as_deref(),
        )?;
        Ok((Some(keyring), source))
    }

    /// The whole keyring for a command run on a stopped server's store: the key
    /// file's keys and those the key roots unseal. With `make`, as `serve` does:
    /// a KMS provider without a key of its own yet makes, seals and stores one (a
    /// `rewrap` that migrates to it); without, nothing is written.
    pub(super) async fn keyring_for<S: credvault::store::Store>(
        &self,
        store: &S,
        make: bool,
    ) -> anyhow::Result<Keyring> {
        let file = self.offline_file()?;
        match self.roots.roots()? {
            Some(roots) if make => Ok(roots.keyring(store, file.as_ref()).await?),
            Some(roots) => {
                let meta = store.meta("").await?;
                Ok(roots.open_keyring(meta, file.as_ref()).await?)
            }
            None => file.ok_or_else(|| config::ConfigError::NoKeyring.into()),
        }
    }

    /// The keyring that opens a backup file: the key file's keys and the sealed
    /// keys in the backup that the key roots unseal.
    pub(super) async fn keyring_for_backup(&self, bytes: &[u8]) -> anyhow::Result<Keyring> {
        let file = self.offline_file()?;
        match self.roots.roots()? {
            Some(roots) => {
                // Unverified here; the restore checks every MAC with the keyring made.
                let (snapshot, _) = credvault::backup::inspect(bytes)?;
                Ok(roots.open_keyring(snapshot.meta, file.as_ref()).await?)
            }
            None => file.ok_or_else(|| config::ConfigError::NoKeyring.into()),
        }
    }

    /// The key file's keyring for an offline command: optional when a key root is
    /// configured (it may hold every key), whichever root seals the active key.
    fn offline_file(&self) -> anyhow::Result<Option<Keyring>> {
        let roots_given =
            self.roots.transit_address.is_some() || self.roots.pkcs11_module.is_some();
        if !self.file_given() && roots_given {
            return Ok(None);
        }
        Ok(self.keyring(None)?.0)
    }

    /// Whether a key file or CREDVAULT_MASTER_KEY is given.
    fn file_given(&self) -> bool {
        self.master_key_file.is_some() || std::env::var_os(config::MASTER_KEY_ENV).is_some()
    }

    /// The key file's keyring, for commands that need one (the key roots do not serve them).
    pub(super) fn file_keyring(&self) -> anyhow::Result<Keyring> {
        match self.keyring(None)? {
            (Some(keyring), _) => Ok(keyring),
            (None, _) => Err(anyhow!("this command reads the master keys from --master-key-file or CREDVAULT_MASTER_KEY; with key roots only, use the server's RPC")),
        }
    }
}
