//! Request builders and small client helpers shared by the tests.

use super::*;

/// A Fleetio secret for requests.
pub fn fleetio(
    api_key: &str,
    account_token: &str,
    api_version: &str,
) -> api::create_credential_request::Secret {
    api::create_credential_request::Secret::Fleetio(FleetioSecret {
        api_key: api_key.into(),
        account_token: account_token.into(),
        api_version: api_version.into(),
    })
}

/// Creates a Fleetio credential through the API.
pub async fn create(
    client: &mut Client,
    name: &str,
    api_key: &str,
    account_token: &str,
) -> api::Credential {
    client
        .create_credential(api::CreateCredentialRequest {
            name: name.into(),
            description: format!("test credential {name}"),
            secret: Some(fleetio(api_key, account_token, "")),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("create {name}: {s:?}"))
        .into_inner()
        .credential
        .unwrap()
}

/// Creates `n` credentials: the i-th named `name(i)`, with API key `key-{i:08}`.
pub async fn create_numbered(client: &mut Client, n: usize, name: impl Fn(usize) -> String) {
    for i in 0..n {
        create(client, &name(i), &format!("key-{i:08}"), "acct").await;
    }
}

/// An update that replaces the secret of the credential named `name` (rotation).
pub fn rotation(name: &str, api_key: &str, account_token: &str) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
        secret: Some(api::update_credential_request::Secret::Fleetio(
            FleetioSecret {
                api_key: api_key.into(),
                account_token: account_token.into(),
                api_version: String::new(),
            },
        )),
        ..Default::default()
    }
}

pub fn by_id_get(id: &str) -> api::GetCredentialRequest {
    api::GetCredentialRequest {
        r#ref: Some(api::get_credential_request::Ref::Id(id.into())),
    }
}

pub fn by_name_get(name: &str) -> api::GetCredentialRequest {
    api::GetCredentialRequest {
        r#ref: Some(api::get_credential_request::Ref::Name(name.into())),
    }
}

pub fn headers_by_id(id: &str) -> api::GetCredentialHeadersRequest {
    api::GetCredentialHeadersRequest {
        r#ref: Some(api::get_credential_headers_request::Ref::Id(id.into())),
    }
}

/// The `Authorization` header a worker gets for the credential named `name`.
pub async fn authorization(client: &mut Client, name: &str) -> String {
    client
        .get_credential_headers(headers_by_name(name))
        .await
        .unwrap_or_else(|s| panic!("headers of {name}: {s:?}"))
        .into_inner()
        .headers[0]
        .value
        .clone()
}

pub fn headers_by_name(name: &str) -> api::GetCredentialHeadersRequest {
    api::GetCredentialHeadersRequest {
        r#ref: Some(api::get_credential_headers_request::Ref::Name(name.into())),
    }
}

pub fn verify_by_name(name: &str) -> api::VerifyCredentialRequest {
    api::VerifyCredentialRequest {
        r#ref: Some(api::verify_credential_request::Ref::Name(name.into())),
    }
}

/// The header list as plain pairs.
pub fn pairs(headers: &[api::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// Every message of a RewrapCredentials call, in order (panics on an error).
pub async fn rewrap_all(
    client: &mut Client,
    batch_size: u32,
) -> Vec<api::RewrapCredentialsResponse> {
    let mut stream = client
        .rewrap_credentials(api::RewrapCredentialsRequest { batch_size })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        all.push(m);
    }
    all
}
