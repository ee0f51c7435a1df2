//! `inventory-sync push`: a POS export file streamed to a real server by the binary.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

const STORE: i64 = 31;

/// What a finished `push` printed, and how it exited.
struct Pushed {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `inventory-sync push ARGS` with `stdin`, off the runtime (the server under test
/// runs on it).
async fn push(args: Vec<String>, stdin: Option<String>) -> Pushed {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
            .arg("push")
            .args(&args)
            .env_remove("INVENTORY_SYNC_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(stdin) = stdin {
            input.write_all(stdin.as_bytes()).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        Pushed {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

fn args(server: &str, extra: &[&str], file: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--store", &STORE.to_string(), "--server", server]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args.push(file.to_owned());
    args
}

fn csv_export(count: usize, in_stock: i64) -> String {
    let mut csv = String::from("external_id,barcodes,in_stock,price,name,category\n");
    for n in 0..count {
        csv.push_str(&format!(
            "sku-{n},{n:08}|9{n:08},{in_stock},{}.99,\"Wine, no. {n}\",wine\n",
            n % 50
        ));
    }
    csv
}

backend_tests! {
    async fn push_streams_a_csv_export_and_prints_the_counts(server) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.csv");
        std::fs::write(&file, csv_export(2_500, 3)).unwrap();
        let file = file.to_str().unwrap();

        let pushed = push(args(&server.endpoint(), &[], file), None).await;
        assert_eq!(pushed.code, 0, "{}", pushed.stderr);
        assert!(pushed.stdout.contains("received 2500  created 2500  updated 0"), "{}", pushed.stdout);
        // Not a terminal: plain progress lines instead of a bar.
        assert!(pushed.stderr.contains("sent 2500 of 2500 products"), "{}", pushed.stderr);

        let mut client = server.client().await;
        let products = list(&mut client, STORE).await;
        assert_eq!(products.len(), 2_500);
        let first = products.iter().find(|p| p.external_id == "sku-1").unwrap();
        assert_eq!(first.barcodes, ["00000001", "900000001"]);
        assert_eq!((first.name.as_deref(), first.price.as_deref()), (Some("Wine, no. 1"), Some("1.99")));

        // A smaller export with --clear sets the rest out of stock.
        std::fs::write(dir.path().join("export.csv"), csv_export(1_000, 3)).unwrap();
        let pushed = push(args(&server.endpoint(), &["--clear", "--allow-mass-clear", "--dry-run"], file), None).await;
        assert_eq!(pushed.code, 0, "{}", pushed.stderr);
        assert!(pushed.stdout.contains("dry run"), "{}", pushed.stdout);
        let pushed = push(args(&server.endpoint(), &["--clear", "--allow-mass-clear"], file), None).await;
        assert_eq!(pushed.code, 0, "{}", pushed.stderr);
        assert!(pushed.stdout.contains("unchanged 1000  cleared 1500"), "{}", pushed.stdout);
    }

    async fn push_reads_json_lines_from_standard_input(server) {
        let lines = "{\"externalId\": \"a\", \"inStock\": \"4\", \"price\": \"9.50\"}\n\
                     {\"external_id\": \"b\", \"barcodes\": [\"123\"], \"category\": \"CATEGORY_DRINK\"}\n";
        let pushed = push(args(&server.endpoint(), &["--idempotency-key", "k-1"], "-"), Some(lines.into())).await;
        assert_eq!(pushed.code, 0, "{}", pushed.stderr);
        assert!(pushed.stdout.contains("created 2"), "{}", pushed.stdout);

        // The same push again under the same key is answered from the first.
        let pushed = push(args(&server.endpoint(), &["--idempotency-key", "k-1"], "-"), Some(lines.into())).await;
        assert_eq!(pushed.code, 0, "{}", pushed.stderr);
        assert!(pushed.stdout.contains("earlier attempt"), "{}", pushed.stdout);
        assert!(pushed.stdout.contains("created 2"), "{}", pushed.stdout);

        let mut client = server.client().await;
        assert_eq!(stock(&mut client, STORE).await, vec![("a".into(), Some(4)), ("b".into(), None)]);
    }

    async fn bad_rows_are_reported_by_line_and_nothing_is_sent(server) {
        let export = "external_id,in_stock,price\nsku-1,1,2.00\nsku-2,many,3.00\nsku-3,1,-4\n";
        let pushed = push(args(&server.endpoint(), &[], "-"), Some(export.into())).await;
        assert_eq!(pushed.code, 2, "{}", pushed.stderr);
        assert!(pushed.stderr.contains("line 3: in_stock \"many\" is not a whole number"), "{}", pushed.stderr);
        assert!(pushed.stderr.contains("line 4: price \"-4\" is negative"), "{}", pushed.stderr);

        let mut client = server.client().await;
        let runs = client
            .list_sync_runs(inventory_sync::pb::ListSyncRunsRequest { store_id: STORE, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(runs.runs.is_empty(), "nothing reached the server");
    }

    async fn a_refused_sync_exits_non_zero(server) {
        // A clear of most of the store trips the mass-clear guard.
        let mut client = server.client().await;
        let products = (0..40).map(|n| stocked(&format!("sku-{n}"), 1)).collect();
        sync(&mut client, header(STORE), products).await.unwrap();
        let pushed = push(args(&server.endpoint(), &["--clear"], "-"), Some(csv_export(2, 1))).await;
        assert_eq!(pushed.code, 1, "{}", pushed.stdout);
        assert!(pushed.stderr.contains("FailedPrecondition: this clearing sync"), "{}", pushed.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_retries_until_the_server_is_up() {
    use std::io::{BufRead, BufReader, Read};

    // A port nobody listens on yet; the server starts there once push has failed once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.csv");
    std::fs::write(&export, csv_export(10, 1)).unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .arg("push")
        .args(args(&server, &[], export.to_str().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let first_failure = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if line.contains("retrying") {
                return (line, stderr);
            }
            line.clear();
        }
        panic!("push ended without retrying");
    });
    let (line, mut stderr) = first_failure.await.unwrap();
    assert!(line.contains("attempt 1 failed"), "{line}");

    let served = serve_in(
        dir.path(),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--insecure-no-auth",
        ],
    );
    let output = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        (child.wait_with_output().unwrap(), rest)
    });
    let (output, rest) = output.await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{rest}");
    assert!(stdout.contains("created 10"), "{stdout}");
    terminate(served.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_draws_a_progress_bar_on_a_terminal() {
    let Some(server) = TestServer::start(Backend::Sqlite).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.csv");
    std::fs::write(&file, csv_export(20_000, 1)).unwrap();
    let command = format!(
        "{} push --store {STORE} --server {} {}",
        env!("CARGO_BIN_EXE_inventory-sync"),
        server.endpoint(),
        file.display()
    );
    // `script` runs the command on a pseudo-terminal and copies what it draws.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let drawn = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{drawn}");
    assert!(
        drawn.contains("/20000 products") && drawn.contains("ETA"),
        "{drawn}"
    );
    assert!(
        !drawn.contains("sent 20000 of"),
        "no plain lines on a terminal: {drawn}"
    );
    assert!(drawn.contains("created 20000"), "{drawn}");
}
