//! `--dev` and the data directory's layout: the development key and callers made on
//! first start (owner-only files), and where a server's files are.

use super::*;

/// Where a server's files are, once `--dev` has made its own.
#[derive(Debug)]
pub struct Layout {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The `--dev` key file, used when no other keyring is given.
    pub dev_key_file: Option<PathBuf>,
    /// The callers file.
    pub callers_file: Option<PathBuf>,
    /// The files `--dev` made or found.
    pub dev: Option<DevFiles>,
}

/// Resolves the data directory and callers file: given ones win; `--dev`
/// makes (or finds) its key, callers and token under `data_dir` (default
/// `.credvault-dev`); otherwise the data lives in `credvault-data`.
pub fn layout(
    dev: bool,
    data_dir: Option<&Path>,
    callers_file: Option<&Path>,
) -> Result<Layout, ConfigError> {
    if !dev {
        return Ok(Layout {
            data_dir: data_dir.map_or_else(|| PathBuf::from("credvault-data"), Path::to_owned),
            dev_key_file: None,
            callers_file: callers_file.map(Path::to_owned),
            dev: None,
        });
    }
    let root = data_dir.map_or_else(|| PathBuf::from(".credvault-dev"), Path::to_owned);
    let files = dev_bootstrap(&root)?;
    Ok(Layout {
        data_dir: files.data_dir.clone(),
        dev_key_file: Some(files.key_file.clone()),
        callers_file: Some(callers_file.map_or_else(|| files.callers_file.clone(), Path::to_owned)),
        dev: Some(files),
    })
}

/// Writes `contents` to a new file readable by its owner only (fails if it exists).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Files made by `--dev` in its root directory.
#[derive(Debug)]
pub struct DevFiles {
    /// The master key file.
    pub key_file: PathBuf,
    /// The callers file with the one all-permissions dev caller.
    pub callers_file: PathBuf,
    /// The dev caller's token, kept so the README's commands can read it.
    pub token_file: PathBuf,
    /// Where the store lives.
    pub data_dir: PathBuf,
}

/// Creates (on first run) or finds the `--dev` files under `root`.
pub fn dev_bootstrap(root: &Path) -> Result<DevFiles, ConfigError> {
    let files = DevFiles {
        key_file: root.join("master.key"),
        callers_file: root.join("callers.toml"),
        token_file: root.join("dev-token"),
        data_dir: root.join("data"),
    };
    let err = |what: &'static str, path: &Path, source: std::io::Error| ConfigError::Dev {
        what,
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(root).map_err(|e| err("directory", root, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| err("directory", root, e))?;
    }
    if !files.key_file.exists() {
        let key = MasterKey::generate_base64();
        write_private_file(&files.key_file, format!("{}\n", key.as_str()).as_bytes())
            .map_err(|e| err("key file", &files.key_file, e))?;
    }
    if !files.callers_file.exists() || !files.token_file.exists() {
        let token = auth::mint_token();
        let entry = auth::callers_entry("dev", &token, &Permission::ALL);
        let _ = fs::remove_file(&files.callers_file);
        let _ = fs::remove_file(&files.token_file);
        write_private_file(
            &files.token_file,
            format!("{}\n", token.as_str()).as_bytes(),
        )
        .map_err(|e| err("token file", &files.token_file, e))?;
        let text =
            format!("# made by `credvault serve --dev`: one caller with every permission\n{entry}");
        write_private_file(&files.callers_file, text.as_bytes())
            .map_err(|e| err("callers file", &files.callers_file, e))?;
    }
    Ok(files)
}
