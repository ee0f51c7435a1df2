//! Huge strings and messages from a hostile client: they are refused as the limits say,
//! every value quoted back is shortened, what the server keeps or answers stays small, and a
//! client with default limits still reads every answer.

use inventory_sync::pb;
use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use tonic::transport::Channel;

use crate::support::*;

const STORE: i64 = 1_300;

/// grpc-core clients (grpcio, grpc-node's native predecessor, C++, Ruby, PHP) take response
/// header and trailer blocks of up to 8 KiB by default; tonic's own default is larger.
const DEFAULT_CLIENT_HEADER_LIST: u32 = 8 * 1024;

/// Longest status message the server sends.
const MAX_MESSAGE: usize = 1024;

/// A client that, like a grpc-core client with default settings, refuses trailers over
/// 8 KiB.
async fn strict_client(server: &TestServer) -> InventorySyncClient<Channel> {
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .http2_max_header_list_size(DEFAULT_CLIENT_HEADER_LIST)
        .connect()
        .await
        .unwrap();
    InventorySyncClient::new(channel)
}

fn priced(external_id: &str, price: String) -> pb::ProductUpdate {
    pb::ProductUpdate {
        price: Some(price),
        ..stocked(external_id, 1)
    }
}

backend_tests! {
    async fn a_million_digit_price_is_refused_with_a_short_message_a_default_client_reads(server) {
        let mut client = strict_client(&server).await;
        for price in ["9".repeat(1_000_000), format!("-{}", "1".repeat(1_000_000)), format!("1.{}", "5".repeat(1_000_000))] {
            let status = sync(&mut client, header(STORE), vec![priced("a", price)]).await.unwrap_err();
            assert_eq!(violated_fields(&status), ["products[0].price"]);
            assert!(status.message().len() <= MAX_MESSAGE, "{} bytes", status.message().len());
            assert!(status.message().contains('…'), "the price is quoted shortened: {}", status.message());
        }
        // Two such refusals later, the store's history still reads in one page.
        let history = client
            .list_sync_runs(pb::ListSyncRunsRequest { store_id: STORE, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.runs.len(), 3);
        for run in &history.runs {
            assert_eq!(run.outcome, pb::SyncOutcome::Rejected as i32);
            assert!(run.status_message.len() <= MAX_MESSAGE, "{}", run.status_message.len());
        }
        assert_nothing_committed(&server, &mut client, STORE).await;
    }

    async fn a_hundred_long_refusals_still_reach_a_default_client_with_their_fields(server) {
        let mut client = strict_client(&server).await;
        // Every product quotes back two long values: its price and a barcode.
        let products: Vec<_> = (0..300)
            .map(|n| pb::ProductUpdate {
                barcodes: vec![format!("{n} {}", "é".repeat(5_000))],
                ..priced(&format!("p{n:0>120}"), format!("{n}{}", "x".repeat(5_000)))
            })
            .collect();
        let status = sync(&mut client, header(STORE), products).await.unwrap_err();
        let fields = violated_fields(&status);
        assert!(fields.len() >= 10, "only {} violations listed", fields.len());
        assert_eq!(fields[..2], ["products[0].barcodes[0]", "products[0].price"]);
        assert!(status.message().contains("600 problems"), "{}", status.message());
        assert!(status.message().len() <= MAX_MESSAGE);
    }

    async fn a_huge_key_to_get_product_is_refused_and_a_missing_one_quoted_short(server) {
        let mut client = strict_client(&server).await;
        let huge = "k".repeat(100_000);
        let status = get(&mut client, STORE, &huge).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["external_id"]);
        assert!(status.message().len() < 200, "{}", status.message());
        let status = get_by_barcode(&mut client, STORE, &huge).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["barcode"]);

        let longest = "m".repeat(128);
        let status = get(&mut client, STORE, &longest).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains(&format!("\"{}\"…", "m".repeat(64))), "{}", status.message());
        assert!(!status.message().contains(&"m".repeat(65)), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_resource_exhausted() {
    let config = || Config {
        max_message_bytes: 16 * 1024,
        ..Config::default()
    };
    each_backend(config, async |server| {
        let mut client = server.client().await;
        let status = get(&mut client, STORE, &"k".repeat(20_000))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        // Of the first message of a sync too, and it commits nothing.
        let products = vec![stocked(&"q".repeat(20_000), 1)];
        let status = send(
            &mut client,
            vec![pb::SyncRequest {
                header: Some(header(STORE)),
                products,
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert_nothing_committed(&server, &mut client, STORE).await;
    })
    .await;
}

/// The server's resident memory now and at its peak since the last reset, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_external_ids_skipped_cost_one_message_and_answer_small() {
    const MESSAGES: usize = 25;
    const HUGE: usize = 3_000_000;
    let dir = tempfile::tempdir().unwrap();
    let served = serve_in(dir.path(), &["--insecure-no-auth"]);
    let pid = served.child.id();
    let mut client = InventorySyncClient::connect(served.endpoint.clone())
        .await
        .unwrap();
    // Warm the server up, then measure its peak from here.
    let warm = messages(header(STORE), vec![stocked("warm", 1)], 10);
    client.sync(tokio_stream::iter(warm)).await.unwrap();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = memory(pid);

    let skip = pb::SyncHeader {
        skip_invalid: true,
        ..header(STORE)
    };
    // Built one at a time as the stream is sent: the client holds one at most.
    let stream = std::iter::once(pb::SyncRequest {
        header: Some(skip),
        products: Vec::new(),
    })
    .chain((0..MESSAGES).map(|n| pb::SyncRequest {
        header: None,
        products: vec![
            stocked(&char::from(b'a' + n as u8).to_string().repeat(HUGE), 1),
            stocked(&format!("ok{n}"), 1),
        ],
    }));
    let answer = client
        .sync(tokio_stream::iter(stream))
        .await
        .unwrap()
        .into_inner();
    let (_, peak) = memory(pid);

    assert_eq!(
        (answer.created, answer.rejected_total),
        (MESSAGES as u64, MESSAGES as u64)
    );
    assert_eq!(answer.rejected.len(), MESSAGES);
    for rejection in &answer.rejected {
        assert_eq!(rejection.field, "external_id");
        assert!(
            rejection.external_id.chars().count() <= 65,
            "{}",
            rejection.external_id.len()
        );
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "server RSS {} MiB before, peak {} MiB during the sync of {MESSAGES} messages of {} MB",
        before >> 20,
        peak >> 20,
        HUGE / 1_000_000
    );
    // Everything kept would be 75 MB; one message decoded is about 6.
    assert!(grown < 30 << 20, "the server grew by {} MiB", grown >> 20);
    drop(client);
    assert!(terminate(served.child).await.success());
}
