//! Who presented what: a bearer token's digest or a client certificate's subjects.

use super::*;

/// What a caller proved to be let in: a bearer token (kept as its digest) or a
/// client-certificate subject.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// The SHA-256 of the bearer token.
    Token([u8; 32]),
    /// The certificate subject that named the caller.
    Subject(String),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Token(_) => f.write_str("Token([REDACTED])"),
            Identity::Subject(s) => f.debug_tuple("Subject").field(s).finish(),
        }
    }
}

/// The names a client certificate (DER) speaks for, typed by where they stand:
/// `cn:` its subject CN, `dns:` its DNS SANs and `uri:` its URI SANs (SPIFFE ids
/// such as `spiffe://cluster.local/ns/ingest/sa/worker`, what service meshes
/// issue), so that a CN can never pass for a SPIFFE id. The certificate was already verified against
/// `--client-ca` by the TLS layer, which also refuses one whose extended key usage
/// does not allow client authentication.
pub fn certificate_subjects(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(|cn| format!("cn:{cn}")))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    names.push(format!("dns:{dns}"))
                }
                x509_parser::extensions::GeneralName::URI(uri) => names.push(format!("uri:{uri}")),
                _ => {}
            }
        }
    }
    names
}
