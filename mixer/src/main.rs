//! The `mixer` binary: parses flags, sets up logging, runs the server until SIGINT or SIGTERM
//! (and, with TLS, rereads its certificate and key on SIGHUP).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mixer::cli::{Cli, Command, LogFormat, ServeArgs, TokenCommand};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(TokenCommand::Create(args)) => args.sign().map(|token| println!("{token}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mixer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log)
        .with_context(|| format!("bad --log filter {:?}", args.log))?;
    // Logs go to stderr; colours only when a person is watching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    let config = args.to_config().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mixer-io")
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let metrics_listener = match args.metrics_listen {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding metrics listener {address}"))?,
            ),
            None => None,
        };
        if let Some(tls) = config.tls.clone() {
            reload_on_hangup(tls)?;
        }
        mixer::server::serve(config, listener, metrics_listener, shutdown_signal()).await
    });
    // `run` has already closed every connection; don't wait on idle runtime threads.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Rereads the TLS certificate and key on every SIGHUP, for the life of the process. The handler
/// is installed before this returns, so a SIGHUP sent once the server is listening never takes
/// the default action (ending the process).
#[cfg(unix)]
fn reload_on_hangup(tls: mixer::server::tls::TlsReloader) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // Two small files: reading them on a runtime thread costs less than a hand-off.
            // reload() logs its outcome, and a failure keeps the certificate in use.
            let _ = tls.reload();
        }
    });
    Ok(())
}

/// Without SIGHUP there is nothing to reload on.
#[cfg(not(unix))]
fn reload_on_hangup(_tls: mixer::server::tls::TlsReloader) -> anyhow::Result<()> {
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
