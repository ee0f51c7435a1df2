//! A server cut off from PostgreSQL: through a TCP proxy between the two that the test
//! controls (the shared database server itself is never stopped), syncs fail with
//! `UNAVAILABLE` and commit nothing, health reports NOT_SERVING, and once the connection is
//! back the server recovers without a restart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inventory_sync::pb;
use inventory_sync::store::DatabaseUrl;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

const STORE: i64 = 61;

/// Forwards connections to `target` while open; `cut` drops every connection and refuses
/// new ones until `restore`.
struct Proxy {
    address: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accepting = tokio::spawn({
            let (open, connections) = (open.clone(), connections.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let target = target.clone();
                    let forwarding = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(forwarding);
                }
            }
        });
        Proxy {
            address,
            open,
            connections,
            accepting,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

async fn health(server: &TestServer) -> i32 {
    let mut client = HealthClient::new(server.channel().await);
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn wait_for_health(server: &TestServer, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(server).await != wanted as i32 {
        assert!(Instant::now() < deadline, "health never became {wanted:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_from_postgresql_answers_unavailable_and_recovers() {
    let Some((admin_url, name, url)) = create_postgres_database().await else {
        return;
    };
    let mut proxied = url::Url::parse(&url).unwrap();
    let target = format!(
        "{}:{}",
        proxied.host_str().unwrap(),
        proxied.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(target).await;
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.address.port())).unwrap();
    let config = Config {
        database_check_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let server = TestServer::start_on(
        DatabaseUrl::Postgres(proxied.to_string()),
        config,
        None,
        Some((admin_url, name)),
    )
    .await;
    let mut client = server.client().await;
    sync(&mut client, header(STORE), vec![stocked("a", 1)])
        .await
        .unwrap();
    let before = list(&mut client, STORE).await;
    wait_for_health(&server, ServingStatus::Serving).await;

    // A sync in the middle of its upload when the database goes away.
    let (messages, stream) = mpsc::channel::<pb::SyncRequest>(2);
    let mut call_client = client.clone();
    let call = tokio::spawn(async move { call_client.sync(ReceiverStream::new(stream)).await });
    let clear = pb::SyncHeader {
        clear: true,
        allow_mass_clear: true,
        ..header(STORE)
    };
    messages
        .send(pb::SyncRequest {
            header: Some(clear),
            products: vec![stocked("b", 1)],
        })
        .await
        .unwrap();
    server.wait_until(|now| now.products_in_flight >= 1).await;
    proxy.cut();
    for batch in 0..20 {
        let products = (0..500)
            .map(|n| stocked(&format!("b{batch}-{n}"), 1))
            .collect();
        if messages
            .send(pb::SyncRequest {
                header: None,
                products,
            })
            .await
            .is_err()
        {
            break; // the server gave up on the sync already
        }
    }
    drop(messages);
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    wait_for_health(&server, ServingStatus::NotServing).await;
    let status = sync(&mut client, header(STORE), vec![stocked("c", 1)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    proxy.restore();
    wait_for_health(&server, ServingStatus::Serving).await;
    assert_eq!(
        list(&mut client, STORE).await,
        before,
        "nothing of the cut syncs committed"
    );
    let response = sync(&mut client, header(STORE), vec![stocked("d", 1)])
        .await
        .unwrap();
    assert_eq!(response.created, 1);
}
