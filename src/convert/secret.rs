//! A request's secret oneof onto a provider's validated secret, and back from a
//! form's fields (the web console): one line per built-in provider in `registry!`,
//! the `generic` arm to the catalog's declared providers. The secret messages'
//! redacting `Debug` lives here too (build.rs derives none for them).

use std::collections::HashMap;
use std::fmt;

use crate::api;
use crate::error::Error;
use crate::provider::{fleetio, Catalog, Provider, ProviderSecret};

/// A message that becomes a built-in provider's secret, validated by its provider.
trait IntoSecret {
    /// The secret, or the provider's refusal (the values wiped).
    fn into_secret(self) -> Result<ProviderSecret, Error>;
    /// The message from a form's fields by name; fields it does not name are left out.
    fn from_fields(fields: &mut HashMap<String, String>) -> Self;
}

impl IntoSecret for api::FleetioSecret {
    fn into_secret(self) -> Result<ProviderSecret, Error> {
        fleetio::secret(self.api_key, self.account_token, self.api_version)
    }

    fn from_fields(fields: &mut HashMap<String, String>) -> Self {
        let mut take = |name: &str| fields.remove(name).unwrap_or_default();
        api::FleetioSecret {
            api_key: take("api_key"),
            account_token: take("account_token"),
            api_version: take("api_version"),
        }
    }
}

/// The request message redacts its secret values (build.rs derives no Debug for it).
impl fmt::Debug for api::FleetioSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetioSecret")
            .field("api_key", &"[REDACTED]")
            .field("account_token", &"[REDACTED]")
            .field("api_version", &self.api_version)
            .finish()
    }
}

/// The request message redacts every value (build.rs derives no Debug for it):
/// which of a declared provider's fields are secret is the file's to say.
impl fmt::Debug for api::GenericSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.fields.keys().collect();
        names.sort();
        f.debug_struct("GenericSecret")
            .field("provider", &self.provider)
            .field("fields", &names)
            .finish_non_exhaustive()
    }
}

/// A generic secret against the catalog's declared providers.
fn generic(catalog: &Catalog, value: api::GenericSecret) -> Result<ProviderSecret, Error> {
    catalog.generic_secret(&value.provider, value.fields)
}

/// The arms of the requests' `secret` oneofs: `Arm => (provider name, message)`.
macro_rules! registry {
    ($($arm:ident => $module:ident :: $message:ident),+ $(,)?) => {
        /// The secret oneof of a create request, validated by its provider.
        pub fn create_secret(
            catalog: &Catalog,
            value: api::create_credential_request::Secret,
        ) -> Result<ProviderSecret, Error> {
            use api::create_credential_request::Secret;
            match value {
                $(Secret::$arm(s) => s.into_secret(),)+
                Secret::Generic(s) => generic(catalog, s),
            }
        }

        /// The secret oneof of an update request, validated by its provider.
        pub fn update_secret(
            catalog: &Catalog,
            value: api::update_credential_request::Secret,
        ) -> Result<ProviderSecret, Error> {
            use api::update_credential_request::Secret;
            match value {
                $(Secret::$arm(s) => s.into_secret(),)+
                Secret::Generic(s) => generic(catalog, s),
            }
        }

        /// A create request's secret oneof from a form's fields by name (the web
        /// console), for the provider named `provider`; left unvalidated.
        pub fn create_secret_from_fields(
            provider: &str,
            mut fields: HashMap<String, String>,
        ) -> api::create_credential_request::Secret {
            use api::create_credential_request::Secret;
            $(if provider == $module::PROVIDER.name() {
                return Secret::$arm(api::$message::from_fields(&mut fields));
            })+
            Secret::Generic(api::GenericSecret { provider: provider.to_owned(), fields })
        }

        /// An update request's secret oneof from a form's fields by name.
        pub fn update_secret_from_fields(
            provider: &str,
            mut fields: HashMap<String, String>,
        ) -> api::update_credential_request::Secret {
            use api::update_credential_request::Secret;
            $(if provider == $module::PROVIDER.name() {
                return Secret::$arm(api::$message::from_fields(&mut fields));
            })+
            Secret::Generic(api::GenericSecret { provider: provider.to_owned(), fields })
        }
    };
}

registry! {
    Fleetio => fleetio::FleetioSecret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_messages_redact_their_secrets() {
        let fleetio = api::FleetioSecret {
            api_key: "key-1234abcd".into(),
            account_token: "acct-9".into(),
            api_version: "2024-03-15".into(),
        };
        let shown = format!("{fleetio:?}");
        assert!(
            !shown.contains("key-1234abcd") && !shown.contains("acct-9"),
            "{shown}"
        );
        assert!(shown.contains("2024-03-15"), "{shown}");
        let generic = api::GenericSecret {
            provider: "acme".into(),
            fields: HashMap::from([("token".to_owned(), "s3cret-value".to_owned())]),
        };
        let shown = format!("{generic:?}");
        assert!(
            !shown.contains("s3cret-value") && shown.contains("token"),
            "{shown}"
        );
    }

    #[test]
    fn a_form_becomes_the_provider_s_message_and_is_validated() {
        let fields = HashMap::from([
            ("api_key".to_owned(), "key-1234abcd".to_owned()),
            ("account_token".to_owned(), "acct-9".to_owned()),
        ]);
        let message = create_secret_from_fields("fleetio", fields);
        assert!(matches!(
            message,
            api::create_credential_request::Secret::Fleetio(_)
        ));
        let secret = create_secret(&Catalog::builtin(), message).unwrap();
        assert_eq!(secret.headers().len(), 2);
        let refused = create_secret(
            &Catalog::builtin(),
            create_secret_from_fields("fleetio", HashMap::new()),
        )
        .unwrap_err();
        assert!(matches!(refused, Error::InvalidArgument(_)), "{refused}");
        let unknown = create_secret_from_fields("nobody", HashMap::new());
        assert!(matches!(
            create_secret(&Catalog::builtin(), unknown),
            Err(Error::InvalidArgument(_))
        ));
    }
}
