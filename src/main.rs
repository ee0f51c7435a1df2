//! The `inventory-sync` binary: parses the command line, starts logging, runs a subcommand.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use inventory_sync::activity::Activity;
use inventory_sync::config::{Cli, Command, ServeArgs};
use inventory_sync::server::{self, AppState};
use inventory_sync::store::Database;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let database = Database::connect(&args.database_url)
        .await
        .map_err(|error| format!("cannot open the database {}: {error}", args.database_url))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        database = %args.database_url,
        "inventory-sync is serving"
    );
    let state = AppState {
        database: database.clone(),
        activity: Activity::default(),
        limits: args.sync_limits(),
        max_message_bytes: args.max_message_bytes,
    };
    server::run(listener, state, shutdown_signal()).await?;
    database.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing requests in flight");
}
