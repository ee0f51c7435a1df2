//! TLS, and mutual TLS for service-to-service calls, with certificates made here.

use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::support::*;

/// A CA, a server certificate for localhost and a client certificate, all in PEM.
struct TestPki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

impl TestPki {
    fn new() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        TestPki {
            server: leaf(vec!["localhost".into(), "127.0.0.1".into()]),
            client: leaf(vec!["pos-integrator".into()]),
            ca: ca.pem(),
        }
    }

    fn server_config(&self, require_client_certificates: bool) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.server.0, &self.server.1));
        if require_client_certificates {
            config.client_ca_root(Certificate::from_pem(&self.ca))
        } else {
            config
        }
    }

    fn client_config(&self, with_certificate: bool) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if with_certificate {
            config.identity(Identity::from_pem(&self.client.0, &self.client.1))
        } else {
            config
        }
    }
}

async fn tls_client(
    server: &TestServer,
    config: ClientTlsConfig,
) -> Result<InventorySyncClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(config)?
        .connect()
        .await?;
    Ok(InventorySyncClient::new(channel))
}

/// Whether a small sync over this client works.
async fn sync_works(client: Result<InventorySyncClient<Channel>, tonic::transport::Error>) -> bool {
    match client {
        Ok(mut client) => sync(&mut client, header(1), vec![stocked("a", 1)])
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki = TestPki::new();
    let config = Config {
        tls: Some(pki.server_config(false)),
        ..Config::default()
    };
    let server = TestServer::start_configured(Backend::Sqlite, config)
        .await
        .unwrap();
    assert!(sync_works(tls_client(&server, pki.client_config(false)).await).await);

    let plaintext = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Ok(channel) => sync(&mut InventorySyncClient::new(channel), header(1), vec![])
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a plaintext client gets nothing from a TLS server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let pki = TestPki::new();
    let config = Config {
        tls: Some(pki.server_config(true)),
        ..Config::default()
    };
    let server = TestServer::start_configured(Backend::Sqlite, config)
        .await
        .unwrap();
    assert!(sync_works(tls_client(&server, pki.client_config(true)).await).await);
    assert!(!sync_works(tls_client(&server, pki.client_config(false)).await).await);

    // A certificate from another CA is no better than none.
    let stranger = TestPki::new();
    let foreign = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(&stranger.client.0, &stranger.client.1));
    assert!(!sync_works(tls_client(&server, foreign).await).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_certificates_from_the_tls_flags() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (cert, key, ca) = (
        write("server.pem", &pki.server.0),
        write("server.key", &pki.server.1),
        write("ca.pem", &pki.ca),
    );
    let args = [
        "--insecure-no-auth",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ];
    let served = serve_in(dir.path(), &args);
    let address = served.endpoint.trim_start_matches("http://").to_owned();

    let connect = |config: ClientTlsConfig| {
        let endpoint = format!("https://{address}");
        async move {
            let channel = Channel::from_shared(endpoint)
                .unwrap()
                .tls_config(config)?
                .connect()
                .await?;
            Ok::<_, tonic::transport::Error>(InventorySyncClient::new(channel))
        }
    };
    assert!(sync_works(connect(pki.client_config(true)).await).await);
    assert!(
        !sync_works(connect(pki.client_config(false)).await).await,
        "mutual TLS is required"
    );
    assert!(terminate(served.child).await.success());
}
