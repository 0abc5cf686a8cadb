//! The file's shape: each table and key a declaration may hold, with its default
//! (serde refuses any other key, and `Spanned` keeps each value's place for errors).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDecl {
    #[serde(default)]
    pub(super) provider: Vec<Spanned<ProviderDecl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderDecl {
    pub(super) name: Spanned<String>,
    pub(super) base_url: Spanned<String>,
    #[serde(default)]
    pub(super) field: Vec<Spanned<FieldDecl>>,
    #[serde(default)]
    pub(super) header: Vec<Spanned<HeaderDecl>>,
    pub(super) verify: Spanned<VerifyDecl>,
    /// The field whose last 4 characters are the listing's hint (default: the first secret field).
    pub(super) hint_field: Option<Spanned<String>>,
    /// The field that names the provider account, for rate limits (default: the first secret field).
    pub(super) account_field: Option<Spanned<String>>,
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn one() -> usize {
    1
}

pub(super) fn max_len() -> usize {
    MAX_SECRET_LEN
}

pub(super) fn get() -> Spanned<String> {
    Spanned::new(0..0, "GET".to_owned())
}

pub(super) fn ok_codes() -> Vec<u16> {
    vec![200]
}

pub(super) fn unauthorized() -> Vec<u16> {
    vec![401]
}

pub(super) fn forbidden() -> Vec<u16> {
    vec![403]
}

pub(super) fn too_many() -> Vec<u16> {
    vec![429]
}

pub(super) fn retry_after() -> String {
    "Retry-After".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldDecl {
    pub(super) name: Spanned<String>,
    #[serde(default = "yes")]
    pub(super) secret: bool,
    #[serde(default = "yes")]
    pub(super) required: bool,
    #[serde(default = "one")]
    pub(super) min_length: usize,
    #[serde(default = "max_len")]
    pub(super) max_length: usize,
    /// The characters a value may hold, as ranges and single characters (`A-Za-z0-9_-`).
    pub(super) allowed: Option<Spanned<String>>,
    /// Used in headers when an optional plain field is left empty.
    pub(super) default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderDecl {
    pub(super) name: Spanned<String>,
    pub(super) value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyDecl {
    #[serde(default = "get")]
    pub(super) method: Spanned<String>,
    pub(super) path: Spanned<String>,
    /// The provider's headers this request sends (default: all).
    pub(super) headers: Option<Vec<Spanned<String>>>,
    #[serde(default = "ok_codes")]
    pub(super) valid: Vec<u16>,
    #[serde(default = "unauthorized")]
    pub(super) rejected: Vec<u16>,
    /// The field a rejection names when no diagnosis tells (default: the only, or first, secret field).
    pub(super) rejected_field: Option<Spanned<String>>,
    #[serde(default = "forbidden")]
    pub(super) forbidden: Vec<u16>,
    #[serde(default = "too_many")]
    pub(super) rate_limited: Vec<u16>,
    #[serde(default = "retry_after")]
    pub(super) retry_after_header: String,
    pub(super) diagnose: Option<Spanned<DiagnoseDecl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiagnoseDecl {
    #[serde(default = "get")]
    pub(super) method: Spanned<String>,
    pub(super) path: Spanned<String>,
    pub(super) headers: Option<Vec<Spanned<String>>>,
    /// The field each answer of this request shows to be the rejected one, by HTTP status.
    pub(super) rejected_field: BTreeMap<String, Spanned<String>>,
}
