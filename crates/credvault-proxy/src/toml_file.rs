//! The proxy's TOML files (routes, workers' tokens), read whole and parsed with
//! unknown fields refused; each file's own checks follow in its module.

use std::path::Path;

/// Why a TOML file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file is ("the routes file").
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or not of the expected shape.
    #[error("{what} {path} is not valid TOML: {message}")]
    Toml {
        /// What the file is.
        what: &'static str,
        /// The path.
        path: String,
        /// The parser's message.
        message: String,
    },
}

/// Parses `text` as `T`; `what` and `path` name the file in errors.
pub fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
    path: &str,
) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| FileError::Toml {
        what,
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// Reads the file at `path` whole (its text, and its path as errors show it).
pub fn read(path: &Path, what: &'static str) -> Result<(String, String), FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        what,
        path: shown.clone(),
        source,
    })?;
    Ok((text, shown))
}
