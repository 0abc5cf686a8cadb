//! TLS to the database: rustls with ring, following the URL's `sslmode`; a server
//! off this machine gets TLS unless the URL says otherwise.

use super::*;

/// Whether every host `config` names is this machine: a Unix socket, `localhost`
/// or a loopback address.
pub(super) fn only_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let local = |name: &str| {
        name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let hosts = config.get_hosts();
    !hosts.is_empty()
        && hosts.iter().all(|h| match h {
            Host::Tcp(name) => local(name),
            Host::Unix(_) => true,
        })
        && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

/// The TLS connector: rustls with ring, verifying the server against `ca_file` or the web roots.
pub(super) fn connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|e| {
                    StoreError::Io(format!(
                        "cannot read the database CA file {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Io(format!(
                    "the database CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Io(format!("tls setup failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tls_defaults {
    use crate::store::*;
    use tokio_postgres::config::SslMode;

    fn mode(url: &str) -> SslMode {
        PgStore::connect(url, &PgSettings::default())
            .unwrap()
            .connect
            .0
            .get_ssl_mode()
    }

    #[tokio::test]
    async fn tls_is_required_off_this_machine_unless_the_url_says() {
        assert_eq!(mode("postgres://u@db.example:5432/v"), SslMode::Require);
        assert_eq!(mode("postgres://u@10.0.0.5/v"), SslMode::Require);
        assert_eq!(mode("postgres://u@127.0.0.1:5432/v"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@localhost/v"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@[::1]:5432/v"), SslMode::Prefer);
        assert_eq!(
            mode("host=/var/run/postgresql user=u dbname=v"),
            SslMode::Prefer
        );
        assert_eq!(
            mode("postgres://u@db.example/v?sslmode=disable"),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://u@127.0.0.1/v?sslmode=require"),
            SslMode::Require
        );
    }
}
