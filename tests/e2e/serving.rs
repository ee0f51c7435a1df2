//! What a probe, grpcurl or an operator sees: health, reflection, logs.

use futures::StreamExt;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

use crate::support::*;

backend_tests! {
    async fn health_reports_serving_for_the_server_and_the_sync_service(server) {
        let mut health = HealthClient::new(server.channel().await);
        for service in ["", "inventory.v1.InventorySync"] {
            let response = health
                .check(HealthCheckRequest { service: service.into() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
        }
    }

    async fn reflection_lists_the_services_in_both_protocol_versions(server) {
        let channel = server.channel().await;

        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a list of services");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"inventory.v1.InventorySync".to_owned()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

        // grpcurl 1.8 speaks only v1alpha; it also needs the file that declares a symbol.
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "inventory.v1.InventorySync".into(),
            )),
        };
        let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected file descriptors");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}
