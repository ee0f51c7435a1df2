//! The sync benchmark: the release server as a separate process, fed by this process over
//! gRPC, on SQLite and (when reachable) PostgreSQL, against the plainest bulk write each
//! database can do with no service around it.
//!
//! `cargo bench --bench sync [-- --products N] [-- --rounds N] [-- --backend sqlite|postgres]`
//!
//! Prints, per case: wall time, products per second, and the server's peak RSS (VmHWM,
//! reset before each case), then the ratios the targets are stated in: the cases they
//! compare run in rounds on fresh databases, and each ratio's median over the rounds is
//! given with every round's.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream;
use inventory_sync::pb;
use inventory_sync::store::{Database, DatabaseUrl};
use sqlx::Connection;

use support::{Backend, Server, fresh_database};

const MESSAGE_SIZE: usize = 1_000;
const DEFAULT_PRODUCTS: usize = 1_000_000;
/// Rounds of the cases the targets are stated in; their ratios' medians are reported. Each
/// case of a round runs once, and this machine's load drifts over seconds.
const DEFAULT_ROUNDS: usize = 3;
const CONCURRENT_SYNCS: usize = 100;
const CONCURRENT_PRODUCTS: usize = 5_000;
const SMALL_STORE: usize = 1_000;
/// The small sync: a store of this many products, synced whole with clear, this many times.
const TINY_STORE: usize = 20;
const TINY_SYNCS: usize = 50;

struct Options {
    products: usize,
    rounds: usize,
    backends: Vec<Backend>,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        products: DEFAULT_PRODUCTS,
        rounds: DEFAULT_ROUNDS,
        backends: vec![Backend::Sqlite, Backend::Postgres],
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--products" => {
                options.products = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--products takes a number")
            }
            "--rounds" => {
                options.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds takes a number from 1")
            }
            "--backend" => {
                options.backends = match args.next().as_deref() {
                    Some("sqlite") => vec![Backend::Sqlite],
                    Some("postgres") => vec![Backend::Postgres],
                    _ => panic!("--backend takes sqlite or postgres"),
                }
            }
            // cargo bench passes --bench; anything else is not ours.
            _ => {}
        }
    }
    options
}

/// The n-th product of a store, as a POS would send it; `version` changes its stock.
fn product(n: usize, version: usize) -> pb::ProductUpdate {
    pb::ProductUpdate {
        external_id: format!("p{n}"),
        barcodes: vec![format!("{n:013}")],
        in_stock: Some(((n + version) % 50) as i64),
        price: Some(format!("{}.99", 5 + n % 90)),
        name: Some(format!("Product number {n}")),
        unit_size: Some("750ML".to_owned()),
        abv: Some(13.5),
        proof: None,
        category: pb::Category::Wine as i32,
    }
}

/// A sync's messages, generated as they are sent. Products `changed(n)` get `version` 1.
fn messages(
    header: pb::SyncHeader,
    count: usize,
    changed: impl Fn(usize) -> bool + Send + 'static,
) -> impl futures::Stream<Item = pb::SyncRequest> + Send + 'static {
    let chunks = count.div_ceil(MESSAGE_SIZE);
    let first = pb::SyncRequest {
        header: Some(header),
        products: Vec::new(),
    };
    stream::iter(std::iter::once(first).chain((0..chunks).map(move |chunk| {
        let start = chunk * MESSAGE_SIZE;
        let end = (start + MESSAGE_SIZE).min(count);
        pb::SyncRequest {
            header: None,
            products: (start..end)
                .map(|n| product(n, usize::from(changed(n))))
                .collect(),
        }
    })))
}

struct Measured {
    seconds: f64,
    products: usize,
    peak_mib: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.products as f64 / self.seconds
    }
}

fn print(backend: Backend, case: &str, measured: &Measured) {
    println!(
        "{:<9} {:<44} {:>9.2} s {:>11.0} products/s {:>8.1} MiB",
        format!("{backend:?}"),
        case,
        measured.seconds,
        measured.rate(),
        measured.peak_mib
    );
}

async fn timed_sync(
    server: &Server,
    header: pb::SyncHeader,
    count: usize,
    changed: impl Fn(usize) -> bool + Send + 'static,
) -> Measured {
    let mut client = server.client().await;
    server.reset_peak_memory();
    let started = Instant::now();
    let response = client
        .sync(messages(header, count, changed))
        .await
        .expect("the sync succeeds")
        .into_inner();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(response.received as usize, count);
    Measured {
        seconds,
        products: count,
        peak_mib: server.peak_memory_mib(),
    }
}

/// `inventory-sync push` of CSV exports of a tenth of `products` and of all of them: its wall
/// time and its own peak RSS, which must not grow with the file (it streams it).
async fn push_memory(server: &Server, dir: &std::path::Path, products: usize) {
    let mut peaks = Vec::new();
    for (store, count) in [(7_001, (products / 10).max(1)), (7_002, products)] {
        let path = dir.join(format!("export-{count}.csv"));
        let mut csv = String::from("external_id,barcodes,in_stock,price,name,unit_size,category\n");
        for n in 0..count {
            use std::fmt::Write;
            writeln!(
                csv,
                "p{n},{n:013},{},{}.99,Product number {n},750ML,wine",
                n % 50,
                5 + n % 90
            )
            .unwrap();
        }
        std::fs::write(&path, csv).unwrap();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
            .args([
                "push",
                "--store",
                &store.to_string(),
                "--server",
                &server.endpoint,
            ])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start push");
        // VmHWM only grows; its last reading before the exit is the peak.
        let mut peak_kib = 0.0f64;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "push failed");
        let measured = Measured {
            seconds: started.elapsed().as_secs_f64(),
            products: count,
            peak_mib: peak_kib / 1024.0,
        };
        print(
            Backend::Sqlite,
            &format!("push of a {count}-row CSV (push's own RSS)"),
            &measured,
        );
        peaks.push(measured.peak_mib);
        let _ = std::fs::remove_file(&path);
    }
    println!(
        "  push peak RSS {products} / {} rows {:>6.2}  (flat: memory does not grow with the file)",
        (products / 10).max(1),
        peaks[1] / peaks[0]
    );
}

/// `TINY_SYNCS` clearing syncs of a `TINY_STORE`-product store, each changing some stock;
/// their median and 90th percentile in milliseconds.
async fn small_syncs(server: &Server) -> (f64, f64) {
    const STORE: i64 = 9_100;
    timed_sync(server, header(STORE, false), TINY_STORE, |_| false).await;
    let mut times = Vec::with_capacity(TINY_SYNCS);
    for round in 0..TINY_SYNCS {
        let measured = timed_sync(server, header(STORE, true), TINY_STORE, move |n| {
            (n + round) % 2 == 0
        })
        .await;
        times.push(measured.seconds * 1_000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[TINY_SYNCS / 2], times[TINY_SYNCS * 9 / 10])
}

fn header(store_id: i64, clear: bool) -> pb::SyncHeader {
    pb::SyncHeader {
        store_id,
        clear,
        allow_mass_clear: true,
        ..pb::SyncHeader::default()
    }
}

/// The database's own limit for a create: the same rows written into the service's own
/// tables and indexes (a product row and its barcode row each), as fast as the database
/// itself takes them, with no service around it. SQLite: one prepared statement per row,
/// stepped through the raw C API in one transaction. PostgreSQL: `COPY` straight into the
/// tables.
async fn database_limit(url: &str, count: usize) -> Measured {
    let parsed: DatabaseUrl = url.parse().unwrap();
    // The service's schema, so that the same indexes are maintained.
    let database = Database::connect(&parsed).await.expect("migrate");
    let sqlite_file = database.sqlite_path();
    database.close().await;
    let rows: Vec<pb::ProductUpdate> = (0..count).map(|n| product(n, 0)).collect();
    let started = Instant::now();
    match sqlite_file {
        Some(file) => sqlite_limit::create(&file, &rows),
        None => postgres_copy_limit(url, &rows).await,
    }
    Measured {
        seconds: started.elapsed().as_secs_f64(),
        products: count,
        peak_mib: f64::NAN,
    }
}

/// SQLite's limit through its C API (`libsqlite3-sys`, the library sqlx links).
mod sqlite_limit {
    use std::ffi::{CStr, CString, c_int};
    use std::ptr;

    use inventory_sync::pb;
    use libsqlite3_sys as ffi;

    /// A prepared statement of `connection`.
    struct Statement(*mut ffi::sqlite3_stmt);

    impl Statement {
        fn prepare(connection: *mut ffi::sqlite3, sql: &str) -> Statement {
            let sql = CString::new(sql).unwrap();
            let mut statement = ptr::null_mut();
            // SAFETY: `connection` is open and `sql` is a NUL-terminated string.
            let code = unsafe {
                ffi::sqlite3_prepare_v2(
                    connection,
                    sql.as_ptr(),
                    -1,
                    &mut statement,
                    ptr::null_mut(),
                )
            };
            check(connection, code);
            Statement(statement)
        }

        fn text(&self, index: c_int, value: &str) {
            // SAFETY: SQLITE_TRANSIENT makes SQLite copy the bytes before this returns.
            let code = unsafe {
                ffi::sqlite3_bind_text(
                    self.0,
                    index,
                    value.as_ptr().cast(),
                    value.len() as c_int,
                    ffi::SQLITE_TRANSIENT(),
                )
            };
            assert_eq!(code, ffi::SQLITE_OK);
        }

        fn int(&self, index: c_int, value: i64) {
            // SAFETY: the statement is prepared and not finalized.
            assert_eq!(
                unsafe { ffi::sqlite3_bind_int64(self.0, index, value) },
                ffi::SQLITE_OK
            );
        }

        fn real(&self, index: c_int, value: Option<f64>) {
            // SAFETY: as above.
            let code = unsafe {
                match value {
                    Some(value) => ffi::sqlite3_bind_double(self.0, index, value),
                    None => ffi::sqlite3_bind_null(self.0, index),
                }
            };
            assert_eq!(code, ffi::SQLITE_OK);
        }

        /// Runs the statement once and readies it for the next row.
        fn step(&self, connection: *mut ffi::sqlite3) {
            // SAFETY: as above.
            let code = unsafe { ffi::sqlite3_step(self.0) };
            if code != ffi::SQLITE_DONE {
                check(connection, code);
            }
            // SAFETY: as above.
            unsafe { ffi::sqlite3_reset(self.0) };
        }
    }

    impl Drop for Statement {
        fn drop(&mut self) {
            // SAFETY: finalized once, here.
            unsafe { ffi::sqlite3_finalize(self.0) };
        }
    }

    fn check(connection: *mut ffi::sqlite3, code: c_int) {
        if code != ffi::SQLITE_OK {
            // SAFETY: `connection` is open; the message lives until its next call.
            let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(connection)) };
            panic!("SQLite error {code}: {}", message.to_string_lossy());
        }
    }

    fn execute(connection: *mut ffi::sqlite3, sql: &str) {
        let sql = CString::new(sql).unwrap();
        // SAFETY: `connection` is open and `sql` NUL-terminated.
        let code = unsafe {
            ffi::sqlite3_exec(
                connection,
                sql.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        check(connection, code);
    }

    /// Creates `rows` as products of store 1 of the migrated database `file`, with the
    /// service's journal mode and durability.
    pub fn create(file: &std::path::Path, rows: &[pb::ProductUpdate]) {
        let path = CString::new(file.to_str().unwrap()).unwrap();
        let mut connection = ptr::null_mut();
        // SAFETY: `path` is NUL-terminated; the handle is closed below.
        let code = unsafe {
            ffi::sqlite3_open_v2(
                path.as_ptr(),
                &mut connection,
                ffi::SQLITE_OPEN_READWRITE,
                ptr::null(),
            )
        };
        check(connection, code);
        execute(
            connection,
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON",
        );
        execute(
            connection,
            "BEGIN IMMEDIATE; INSERT INTO stores (id, created_at) VALUES (1, 0)",
        );
        {
            let product = Statement::prepare(
                connection,
                "INSERT INTO products (store_id, external_id, barcodes, in_stock, price, name,
                                       unit_size, abv, proof, category, created_at, updated_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, 0)",
            );
            let barcode = Statement::prepare(
                connection,
                "INSERT INTO product_barcodes (store_id, barcode, product_id) VALUES (1, ?1, ?2)",
            );
            for row in rows {
                product.text(1, &row.external_id);
                product.text(2, &row.barcodes[0]);
                product.int(3, row.in_stock.unwrap());
                product.text(4, row.price.as_deref().unwrap());
                product.text(5, row.name.as_deref().unwrap());
                product.text(6, row.unit_size.as_deref().unwrap());
                product.real(7, row.abv);
                product.real(8, row.proof);
                product.int(9, i64::from(row.category));
                product.step(connection);
                // SAFETY: `connection` is open.
                let id = unsafe { ffi::sqlite3_last_insert_rowid(connection) };
                barcode.text(1, &row.barcodes[0]);
                barcode.int(2, id);
                barcode.step(connection);
            }
        }
        execute(connection, "COMMIT");
        // SAFETY: every statement is finalized; closed once.
        unsafe { ffi::sqlite3_close(connection) };
    }
}

/// PostgreSQL's limit: `COPY` of the products (ids drawn up front) and their barcodes
/// straight into the service's tables, in one transaction.
async fn postgres_copy_limit(url: &str, rows: &[pb::ProductUpdate]) {
    use std::fmt::Write;
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let mut tx = connection.begin().await.unwrap();
    sqlx::raw_sql("INSERT INTO stores (id, created_at) VALUES (1, 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut copy = tx
        .copy_in_raw(
            "COPY products (id, store_id, external_id, barcodes, in_stock, price, name, unit_size,
                            abv, proof, category, created_at, updated_at) FROM STDIN",
        )
        .await
        .unwrap();
    let mut buffer = String::new();
    for (n, row) in rows.iter().enumerate() {
        writeln!(
            buffer,
            "{}\t1\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t\\N\t{}\t0\t0",
            n + 1,
            row.external_id,
            row.barcodes[0],
            row.in_stock.unwrap(),
            row.price.as_deref().unwrap(),
            row.name.as_deref().unwrap(),
            row.unit_size.as_deref().unwrap(),
            row.abv.unwrap(),
            row.category
        )
        .unwrap();
        if n % MESSAGE_SIZE == MESSAGE_SIZE - 1 {
            copy.send(std::mem::take(&mut buffer).into_bytes())
                .await
                .unwrap();
        }
    }
    if !buffer.is_empty() {
        copy.send(std::mem::take(&mut buffer).into_bytes())
            .await
            .unwrap();
    }
    copy.finish().await.unwrap();
    let mut copy = tx
        .copy_in_raw("COPY product_barcodes (store_id, barcode, product_id) FROM STDIN")
        .await
        .unwrap();
    for (n, row) in rows.iter().enumerate() {
        writeln!(buffer, "1\t{}\t{}", row.barcodes[0], n + 1).unwrap();
        if n % MESSAGE_SIZE == MESSAGE_SIZE - 1 {
            copy.send(std::mem::take(&mut buffer).into_bytes())
                .await
                .unwrap();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.into_bytes()).await.unwrap();
    }
    copy.finish().await.unwrap();
    tx.commit().await.unwrap();
}

/// The cases whose ratios the targets are stated in, measured once on fresh databases.
struct Round {
    /// Its main database, which holds the big store.
    main_url: String,
    small: Measured,
    create: Measured,
    resync: Measured,
    changed: Measured,
    concurrent: Measured,
    succeeded: usize,
    limit: Measured,
}

impl Round {
    /// The ratios the targets are stated in: (name, value, target).
    fn ratios(&self, create_target: f64) -> Vec<(String, f64, String)> {
        let products = self.create.products;
        let small = self.small.products;
        vec![
            (
                "create / database limit".into(),
                self.create.seconds / self.limit.seconds,
                format!("<= {create_target}"),
            ),
            (
                "unchanged re-sync / create".into(),
                self.resync.seconds / self.create.seconds,
                "<= 0.4".into(),
            ),
            (
                "10% changed, clear / create".into(),
                self.changed.seconds / self.create.seconds,
                "<= 0.6".into(),
            ),
            (
                format!("peak RSS {products}, MiB"),
                self.create.peak_mib,
                "<= 64".into(),
            ),
            (
                format!("peak RSS {products} / {small}"),
                self.create.peak_mib / self.small.peak_mib,
                "<= 1.2".into(),
            ),
            (
                format!("peak RSS, {CONCURRENT_SYNCS} syncs at once, MiB"),
                self.concurrent.peak_mib,
                "<= 128".into(),
            ),
            (
                "concurrent / single rate".into(),
                self.concurrent.rate() / self.create.rate(),
                format!(">= 0.8; {}/{CONCURRENT_SYNCS} succeeded", self.succeeded),
            ),
        ]
    }
}

/// One round on fresh databases: a small and a big create, the big store re-synced as it is
/// and with a tenth changed, many small syncs at once, and the database's own limit.
async fn round(
    backend: Backend,
    products: usize,
    dir: &std::path::Path,
    number: usize,
) -> Option<Round> {
    let main_url = fresh_database(backend, dir, &format!("main{number}")).await?;
    let limit_url = fresh_database(backend, dir, &format!("limit{number}")).await?;
    let small = (products / 10).max(1);

    let server = Server::start(&main_url);
    let sync_small = timed_sync(&server, header(1, false), small, |_| false).await;
    print(backend, &format!("{small} create"), &sync_small);
    let create = timed_sync(&server, header(2, false), products, |_| false).await;
    print(backend, &format!("{products} create"), &create);
    let resync = timed_sync(&server, header(2, false), products, |_| false).await;
    print(
        backend,
        &format!("{products} re-sync, nothing changed"),
        &resync,
    );
    let changed = timed_sync(&server, header(2, true), products, |n| n % 10 == 0).await;
    print(
        backend,
        &format!("{products}, 10% changed, clear"),
        &changed,
    );

    server.reset_peak_memory();
    let started = Instant::now();
    let mut syncs = Vec::new();
    for store in 0..CONCURRENT_SYNCS {
        let mut client = server.client().await;
        syncs.push(tokio::spawn(async move {
            let header = header(1_000 + store as i64, false);
            client
                .sync(messages(header, CONCURRENT_PRODUCTS, |_| false))
                .await
                .map(|response| response.into_inner().created)
        }));
    }
    let mut succeeded = 0;
    for sync in syncs {
        if let Ok(Ok(created)) = sync.await
            && created as usize == CONCURRENT_PRODUCTS
        {
            succeeded += 1;
        }
    }
    let concurrent = Measured {
        seconds: started.elapsed().as_secs_f64(),
        products: CONCURRENT_SYNCS * CONCURRENT_PRODUCTS,
        peak_mib: server.peak_memory_mib(),
    };
    print(
        backend,
        &format!("{CONCURRENT_SYNCS} concurrent syncs of {CONCURRENT_PRODUCTS} ({succeeded} ok)"),
        &concurrent,
    );
    drop(server);

    let limit = database_limit(&limit_url, products).await;
    print(
        backend,
        &format!("{products} database limit (no service)"),
        &limit,
    );
    Some(Round {
        main_url,
        small: sync_small,
        create,
        resync,
        changed,
        concurrent,
        succeeded,
        limit,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

async fn bench(
    backend: Backend,
    products: usize,
    rounds: usize,
    dir: &std::path::Path,
) -> Option<()> {
    let mut measured = Vec::new();
    for number in 0..rounds {
        println!("{backend:?} round {}:", number + 1);
        measured.push(round(backend, products, dir, number).await?);
    }

    // The cases outside the rounds, on a store beside the last round's products.
    let main_url = &measured.last().expect("at least one round").main_url;
    let empty_url = fresh_database(backend, dir, "empty").await?;
    let server = Server::start(main_url);
    if backend == Backend::Sqlite {
        push_memory(&server, dir, products).await;
    }
    timed_sync(&server, header(9_000, false), SMALL_STORE, |_| false).await;
    let crowded_clear = timed_sync(&server, header(9_000, true), SMALL_STORE, |n| n % 2 == 0).await;
    print(
        backend,
        "clear of a 1000-product store beside the rest",
        &crowded_clear,
    );
    drop(server);

    let server = Server::start(&empty_url);
    timed_sync(&server, header(9_000, false), SMALL_STORE, |_| false).await;
    let lonely_clear = timed_sync(&server, header(9_000, true), SMALL_STORE, |n| n % 2 == 0).await;
    print(
        backend,
        "clear of a 1000-product store, alone",
        &lonely_clear,
    );
    let small_sync = small_syncs(&server).await;
    drop(server);

    let (create_target, name) = match backend {
        Backend::Sqlite => (1.5, "SQLite"),
        Backend::Postgres => (2.0, "PostgreSQL"),
    };
    println!("{name} ratios, median of {rounds} rounds on fresh databases (each round's; target):");
    let per_round: Vec<_> = measured
        .iter()
        .map(|round| round.ratios(create_target))
        .collect();
    for (position, (label, _, target)) in per_round[0].iter().enumerate() {
        let values: Vec<f64> = per_round.iter().map(|ratios| ratios[position].1).collect();
        let each: Vec<String> = values.iter().map(|value| format!("{value:.2}")).collect();
        println!(
            "  {label:<40} {:>7.2}  ({}; {target})",
            median(&values),
            each.join(" ")
        );
    }
    println!(
        "  small sync ({TINY_STORE}, clear), median    {:>7.2} ms  (<= 5; p90 {:.2} ms)",
        small_sync.0, small_sync.1
    );
    println!(
        "  crowded / lonely clear                   {:>7.2}  (<= 3)",
        crowded_clear.seconds / lonely_clear.seconds
    );
    Some(())
}

#[tokio::main]
async fn main() {
    let options = options();
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!(
        "sync benchmark: {} products in messages of {MESSAGE_SIZE}, server {}",
        options.products,
        env!("CARGO_BIN_EXE_inventory-sync")
    );
    for backend in options.backends {
        let started = Instant::now();
        if bench(backend, options.products, options.rounds, dir.path())
            .await
            .is_none()
        {
            println!("{backend:?}: database unreachable, skipped");
        }
        println!(
            "{backend:?} done in {:.0?}",
            Duration::from_secs(started.elapsed().as_secs())
        );
    }
}
