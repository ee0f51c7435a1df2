//! Logging, in a test binary of its own: log subscribers are per thread, but which log
//! statements are enabled is cached per process, so tests of other behaviour running in
//! parallel would race with this one.

#[path = "e2e/support.rs"]
#[allow(dead_code, unused_macros, unused_imports)]
mod support;

use std::sync::{Arc, Mutex};

use inventory_sync::pb;

use support::*;

/// Collects formatted log lines in memory.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every line the service logs about a sync names the store and the sync. A single-threaded
/// runtime keeps the server's tasks on this thread, under this test's log subscriber.
#[tokio::test(flavor = "current_thread")]
async fn every_log_line_of_a_sync_names_its_store_and_sync_id() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("inventory_sync=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let mut client = server.client().await;
    let ok = sync(&mut client, header(31), vec![stocked("a", 1)])
        .await
        .unwrap();
    sync(&mut client, header(31), vec![stocked("a", -1)])
        .await
        .unwrap_err();
    let clear = pb::SyncHeader {
        clear: true,
        ..header(31)
    };
    sync(&mut client, clear, vec![]).await.unwrap();
    drop(client);
    drop(server);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert!(
        lines.len() >= 6,
        "three syncs log their start and end:\n{text}"
    );
    for line in &lines {
        assert!(
            line.contains("store_id=31") && line.contains("sync_id="),
            "{line}"
        );
    }
    assert!(text.contains(&format!("sync_id={}", ok.sync_id)), "{text}");
}
