//! The config turned into rumqttc options: last will, TLS with ring, a
//! password read from a file, the environment or a systemd credential (the
//! config itself never holds it, so it can stay world-readable), and
//! connection errors turned into one line that names the fix.

use std::path::Path;
use std::sync::Arc;

use rumqttc::{ConnectReturnCode, ConnectionError, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::options::{MqttConfig, TlsFiles};
use super::PublishError;
use crate::secret::SecretSource;

/// Results with a long top-k exceed rumqttc's 10 KiB default.
const MAX_PACKET: usize = 1 << 20;

pub fn options(cfg: &MqttConfig, availability_topic: &str) -> Result<MqttOptions, PublishError> {
    let mut o = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    // Unacknowledged results live in the outbox, not in a broker session:
    // a clean session also avoids rumqtt #1014/#1056 (no publishing after a
    // reconnect when a session is resumed half-way).
    o.set_clean_session(true);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_last_will(LastWill::new(availability_topic, "offline", QoS::AtLeastOnce, true));
    if let Some(user) = &cfg.username {
        let password = cfg.password.as_ref().map(password).transpose()?.unwrap_or_default();
        o.set_credentials(user, password);
    }
    if let Some(tls) = &cfg.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(client_config(tls)?))));
    }
    Ok(o)
}

fn password(src: &SecretSource) -> Result<String, PublishError> {
    src.read(&src.key("mqtt.password")).map_err(|e| PublishError::Password(e.to_string()))
}

fn client_config(tls: &TlsFiles) -> Result<rustls::ClientConfig, PublishError> {
    let err = |path: &Path, reason: String| PublishError::Tls { path: path.to_owned(), reason };
    let mut roots = rustls::RootCertStore::empty();
    let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, PublishError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err(path, format!("cannot read PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(err(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
        }
        Ok(certs)
    };
    for c in certs(&tls.ca_file)? {
        roots.add(c).map_err(|e| err(&tls.ca_file, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&tls.ca_file, e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err(key, format!("cannot read a PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| err(cert, format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// One line that says what went wrong and what to check.
pub fn describe(e: &ConnectionError, broker: &str) -> String {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => format!(
            "{broker} refused the connection: not authorized (bad user name or password; check mqtt.username and the password source)"
        ),
        ConnectionError::ConnectionRefused(code) => format!("{broker} refused the connection: {code:?}"),
        ConnectionError::Tls(t) => {
            let t = t.to_string();
            let hint = if t.contains("UnknownIssuer") || t.contains("invalid peer certificate") {
                " (the broker's certificate is not signed by mqtt.ca_file's CA, or does not name this host)"
            } else {
                ""
            };
            format!("{broker}: TLS handshake failed: {t}{hint}")
        }
        ConnectionError::NetworkTimeout => {
            format!("{broker}: no answer within mqtt.connect_timeout (broker down, frozen or unreachable)")
        }
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("{broker}: connection refused (is the broker running and listening on this port?)")
        }
        // A TLS listener answering a plain client closes at once.
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{broker}: the connection was closed during the handshake ({io}; TLS port without mqtt.tls?)")
        }
        e => format!("{broker}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_a_file_without_its_newline_or_from_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(password(&SecretSource::File(f)).unwrap(), "s3cret");
        std::env::set_var("LOOKOUT_TEST_PW", "from-env");
        assert_eq!(password(&SecretSource::Env("LOOKOUT_TEST_PW".into())).unwrap(), "from-env");
        let e = password(&SecretSource::Env("LOOKOUT_TEST_PW_UNSET".into())).unwrap_err().to_string();
        assert!(e.contains("LOOKOUT_TEST_PW_UNSET") && e.contains("mqtt.password_env"), "{e}");
        let e = password(&SecretSource::File(d.path().join("none"))).unwrap_err().to_string();
        assert!(e.contains("none") && e.contains("mqtt.password_file"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = client_config(&TlsFiles { ca_file: ca, client_cert: None, client_key: None }).unwrap_err();
        assert!(e.to_string().contains("ca.pem") && e.to_string().contains("no PEM certificate"), "{e}");
    }
}
