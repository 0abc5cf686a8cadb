//! A provider's secret: its fields by name ([`Values`]), sealed and opened as one
//! [`ProviderSecret`], and why opened bytes may not be one.

use super::*;

/// The values of a secret, in its provider's field order; an unset field is empty.
pub struct Values {
    pub(super) values: Vec<Secret>,
    /// Fields the sealed secret holds that its provider no longer declares
    /// (kept sealed, never sent).
    pub(super) undeclared: Vec<String>,
}

impl Values {
    /// Values from strings in field order (taken, not copied).
    pub fn new(values: Vec<String>) -> Self {
        Values {
            values: values.into_iter().map(secret).collect(),
            undeclared: Vec::new(),
        }
    }

    /// The value of field `index` (empty when unset or out of range).
    pub fn get(&self, index: usize) -> &str {
        self.values
            .get(index)
            .map_or("", |s| s.expose_secret().as_str())
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The names of stored fields the provider no longer declares.
    pub fn undeclared(&self) -> &[String] {
        &self.undeclared
    }

    /// Notes stored fields the provider no longer declares.
    pub(super) fn with_undeclared(mut self, undeclared: Vec<String>) -> Self {
        self.undeclared = undeclared;
        self
    }

    /// The sealed form: field `i` as protobuf string tag `i + 1`, unset fields left out.
    pub(super) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::new());
        for (i, value) in self.values.iter().enumerate() {
            let value = value.expose_secret();
            if !value.is_empty() {
                let tag = u32::try_from(i + 1).unwrap_or(u32::MAX);
                prost::encoding::string::encode(tag, value, &mut *buf);
            }
        }
        buf
    }

    /// Reads the sealed form back for `fields`; unknown tags are skipped.
    pub(super) fn decode(fields: &[Field], mut bytes: &[u8]) -> Result<Self, SecretFormatError> {
        use prost::encoding::{decode_key, skip_field, string, DecodeContext, WireType};
        let mut values: Vec<String> = vec![String::new(); fields.len()];
        while !bytes.is_empty() {
            let (tag, wire) = decode_key(&mut bytes).map_err(|_| SecretFormatError::Malformed)?;
            let slot = usize::try_from(tag)
                .ok()
                .and_then(|t| t.checked_sub(1))
                .filter(|_| wire == WireType::LengthDelimited)
                .and_then(|i| values.get_mut(i));
            let read = match slot {
                Some(value) => string::merge(wire, value, &mut bytes, DecodeContext::default()),
                None => skip_field(wire, tag, &mut bytes, DecodeContext::default()),
            };
            if read.is_err() {
                // What was read so far is wiped as the Values drop.
                drop(Values::new(values));
                return Err(SecretFormatError::Malformed);
            }
        }
        let values = Values::new(values);
        match fields
            .iter()
            .enumerate()
            .find(|(i, f)| f.required && values.get(*i).is_empty())
        {
            Some((_, f)) => Err(SecretFormatError::Missing(f.name.to_string())),
            None => Ok(values),
        }
    }
}

/// Why opened bytes are not a provider's secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFormatError {
    /// No provider has that name.
    #[error("no provider is named {0:?}")]
    UnknownProvider(String),
    /// The bytes are not the provider's secret.
    #[error("the opened secret is not in the provider's format")]
    Malformed,
    /// A field the provider needs is absent.
    #[error("the opened secret lacks its {0}")]
    Missing(String),
}

/// A provider secret, validated and ready to seal or use.
pub struct ProviderSecret {
    pub(super) provider: ProviderRef,
    pub(super) values: Values,
}

impl fmt::Debug for ProviderSecret {
    /// Plain fields are shown, secret ones redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ProviderSecret");
        s.field("provider", &self.provider.name());
        for (i, field) in self.provider.fields().iter().enumerate() {
            if field.secret {
                s.field(&field.name, &"[REDACTED]");
            } else {
                s.field(&field.name, &self.values.get(i));
            }
        }
        s.finish()
    }
}

impl ProviderSecret {
    /// A secret of `provider` from values it validated.
    pub fn new(provider: ProviderRef, values: Values) -> Self {
        ProviderSecret { provider, values }
    }

    /// The provider's name as stored and shown (`fleetio`).
    pub fn provider(&self) -> &str {
        self.provider.name()
    }

    /// The names of the fields this secret sets, in field order (plain metadata
    /// stored beside the sealed secret, to report fields a later declaration drops).
    pub fn set_fields(&self) -> Vec<String> {
        let fields = self.provider.fields();
        (0..self.values.len())
            .filter(|&i| !self.values.get(i).is_empty())
            .filter_map(|i| fields.get(i).map(|f| f.name.to_string()))
            .chain(self.values.undeclared().iter().cloned())
            .collect()
    }

    /// The values of the fields that are not secret and are set, by field name
    /// (Fleetio's API version): shown to operators so that a rotation keeps them.
    pub fn plain_fields(&self) -> Vec<(String, String)> {
        self.provider
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, f)| !f.secret && !self.values.get(*i).is_empty())
            .map(|(i, f)| (f.name.to_string(), self.values.get(i).to_owned()))
            .collect()
    }

    /// Stored fields the provider no longer declares.
    pub fn undeclared(&self) -> &[String] {
        self.values.undeclared()
    }

    /// Whether its provider comes from the providers file.
    pub fn is_declared(&self) -> bool {
        matches!(self.provider, ProviderRef::Declared(_))
    }

    /// The non-secret hint shown in listings.
    pub fn hint(&self) -> String {
        self.provider.hint(&self.values)
    }

    /// A fingerprint of the provider account the secret speaks for.
    pub fn account_key(&self) -> [u8; 32] {
        self.provider.account_key(&self.values)
    }

    /// The headers a worker sends with this secret.
    pub fn headers(&self) -> Vec<(Cow<'static, str>, String)> {
        self.provider.headers(&self.values)
    }

    /// The bytes to seal.
    pub fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        self.provider.encode(&self.values)
    }

    /// Reads opened bytes back as the secret of the built-in provider named `provider`.
    pub fn from_plaintext(provider: &str, bytes: &[u8]) -> Result<Self, SecretFormatError> {
        let provider = find(provider)
            .ok_or_else(|| SecretFormatError::UnknownProvider(provider.to_owned()))?;
        let values = provider.decode(bytes)?;
        Ok(ProviderSecret {
            provider: ProviderRef::Builtin(provider),
            values,
        })
    }
}

/// The registry: every built-in provider, each a module exposing `PROVIDER` (its
/// [`Provider`]) and a `secret(...)` constructor that validates its fields. The
/// server maps each provider's `<Provider>Secret` message onto that constructor
/// (`src/convert/secret.rs`); declared providers need neither.
pub static BUILTIN: &[&'static dyn Provider] = &[&fleetio::PROVIDER];
