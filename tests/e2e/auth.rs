//! Authentication and authorization: every call but health and reflection needs a token,
//! and a token acts only within its role and stores.

use inventory_sync::auth::{self, Role};
use inventory_sync::pb;
use inventory_sync::pb::match_queue_client::MatchQueueClient;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

/// A request carrying `authorization: Bearer <token>` (no metadata for `None`).
fn bearer<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn token(server: &TestServer, role: Role) -> String {
    auth::create_token(&server.database, "test", &role)
        .await
        .unwrap()
        .to_string()
}

/// The status code of a sync of `store_id` with `token`.
async fn sync_code(server: &TestServer, token: Option<&str>, store_id: i64) -> Code {
    let mut client = server.client().await;
    let stream = tokio_stream::iter(messages(header(store_id), vec![stocked("a", 1)], 10));
    match client.sync(bearer(stream, token)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn get_code(server: &TestServer, token: Option<&str>, store_id: i64) -> Code {
    let mut client = server.client().await;
    let request = pb::GetProductRequest {
        store_id,
        key: Some(pb::get_product_request::Key::ExternalId("a".into())),
    };
    match client.get_product(bearer(request, token)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn list_code(server: &TestServer, token: Option<&str>, store_id: i64) -> Code {
    let mut client = server.client().await;
    let request = pb::ListProductsRequest {
        store_id,
        ..Default::default()
    };
    match client.list_products(bearer(request, token)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn runs_code(server: &TestServer, token: Option<&str>, store_id: i64) -> Code {
    let mut client = server.client().await;
    let request = pb::ListSyncRunsRequest {
        store_id,
        ..Default::default()
    };
    match client.list_sync_runs(bearer(request, token)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn queue_code(server: &TestServer, token: Option<&str>) -> Code {
    let mut queue = MatchQueueClient::new(server.channel().await);
    match queue
        .list_pending(bearer(pb::ListPendingRequest::default(), token))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

backend_tests! {
    start = start_secured;

    async fn calls_without_a_valid_token_are_unauthenticated(server) {
        let revoked = auth::create_token(&server.database, "old", &Role::Admin).await.unwrap();
        assert!(auth::revoke_token(&server.database, revoked.id).await.unwrap());
        let revoked = revoked.to_string();
        let valid = token(&server, Role::Admin).await;
        // The same id with a different secret.
        let last = if valid.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &valid[..valid.len() - 1]);
        for token in [None, Some("garbage"), Some(forged.as_str()), Some(revoked.as_str())] {
            assert_eq!(sync_code(&server, token, 1).await, Code::Unauthenticated, "{token:?}");
            assert_eq!(get_code(&server, token, 1).await, Code::Unauthenticated, "{token:?}");
            assert_eq!(list_code(&server, token, 1).await, Code::Unauthenticated, "{token:?}");
            assert_eq!(runs_code(&server, token, 1).await, Code::Unauthenticated, "{token:?}");
            assert_eq!(queue_code(&server, token).await, Code::Unauthenticated, "{token:?}");
        }
        assert_eq!(sync_code(&server, Some(&valid), 1).await, Code::Ok);
    }

    async fn a_store_token_acts_only_for_its_stores(server) {
        let store = token(&server, Role::Store(vec![10, 11])).await;
        assert_eq!(sync_code(&server, Some(&store), 10).await, Code::Ok);
        assert_eq!(sync_code(&server, Some(&store), 11).await, Code::Ok);
        assert_eq!(get_code(&server, Some(&store), 10).await, Code::Ok);
        assert_eq!(list_code(&server, Some(&store), 11).await, Code::Ok);
        assert_eq!(runs_code(&server, Some(&store), 10).await, Code::Ok);

        assert_eq!(sync_code(&server, Some(&store), 12).await, Code::PermissionDenied);
        assert_eq!(get_code(&server, Some(&store), 12).await, Code::PermissionDenied);
        assert_eq!(list_code(&server, Some(&store), 12).await, Code::PermissionDenied);
        assert_eq!(runs_code(&server, Some(&store), 12).await, Code::PermissionDenied, "another store's history");
        assert_eq!(queue_code(&server, Some(&store)).await, Code::PermissionDenied);

        let mut client = server.client().await;
        let stream = tokio_stream::iter(messages(header(12), vec![stocked("a", 1)], 10));
        let status = client.sync(bearer(stream, Some(&store))).await.unwrap_err();
        assert!(status.message().contains("store 12"), "the store is named: {}", status.message());
        let admin = token(&server, Role::Admin).await;
        let request = pb::ListProductsRequest { store_id: 12, ..Default::default() };
        let mut listing = client.list_products(bearer(request, Some(&admin))).await.unwrap().into_inner();
        assert!(listing.message().await.unwrap().is_none(), "nothing was written");
    }

    async fn a_matcher_token_works_the_queue_and_reads_any_store_but_never_syncs(server) {
        let matcher = token(&server, Role::Matcher).await;
        assert_eq!(queue_code(&server, Some(&matcher)).await, Code::Ok);
        assert_eq!(get_code(&server, Some(&matcher), 99).await, Code::NotFound, "read allowed");
        assert_eq!(list_code(&server, Some(&matcher), 98).await, Code::Ok);
        assert_eq!(runs_code(&server, Some(&matcher), 98).await, Code::Ok);
        assert_eq!(sync_code(&server, Some(&matcher), 97).await, Code::PermissionDenied);

        let admin = token(&server, Role::Admin).await;
        assert_eq!(sync_code(&server, Some(&admin), 97).await, Code::Ok);
        assert_eq!(queue_code(&server, Some(&admin)).await, Code::Ok);
        assert_eq!(get_code(&server, Some(&admin), 97).await, Code::Ok);
    }

    async fn health_and_reflection_answer_without_a_token(server) {
        let mut health = HealthClient::new(server.channel().await);
        let response = health.check(HealthCheckRequest { service: String::new() }).await;
        assert!(response.is_ok());
        let mut reflection = tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            server.channel().await,
        );
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        assert!(reflection.server_reflection_info(tokio_stream::iter([request])).await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_in_use_is_refused_within_the_recheck_interval() {
    const RECHECK: std::time::Duration = std::time::Duration::from_millis(300);
    let config = || Config {
        authenticated: true,
        token_recheck_interval: RECHECK,
        ..Config::default()
    };
    each_backend(config, async |server| {
        let token = server.token("pos", Role::Store(vec![5])).await;
        let id: i64 = token.split('_').nth(1).unwrap().parse().unwrap();
        assert_eq!(get_code(&server, Some(&token), 5).await, Code::NotFound);
        let revoked_at = std::time::Instant::now();
        assert!(auth::revoke_token(&server.database, id).await.unwrap());
        tokio::time::sleep(RECHECK.saturating_sub(revoked_at.elapsed())).await;
        assert_eq!(
            get_code(&server, Some(&token), 5).await,
            Code::Unauthenticated
        );
    })
    .await;
}
