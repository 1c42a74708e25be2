//! `colo-standin`: the stand-in engine for tests (see the library's documentation). Parses the
//! command line, takes the port, prints `colo-standin bound http://ADDR` on stdout (so a test that
//! asked for port 0 learns the port), and serves until the engine dies (exit status 1) or a
//! SIGINT or SIGTERM arrives (exit status 0).

use anyhow::Context;
use colo_standin::{bind, Cli, Ended, StandinError};
use std::io::Write;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_args(std::env::args()).unwrap_or_else(|e| e.exit());
    let config = cli.into_config().map_err(StandinError::Config)?;
    let bound = bind(config).await.context("starting the stand-in engine")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "colo-standin bound http://{}", bound.local_addr()).context("writing the bound address to stdout")?;
    stdout.flush().context("writing the bound address to stdout")?;
    tokio::select! {
        ended = bound.run() => match ended.context("serving")? {
            Ended::Died => {
                tracing::error!("the engine died; exiting with status 1");
                std::process::exit(1)
            }
        },
        signal = stop_signal() => {
            signal.context("waiting for a stop signal")?;
            Ok(())
        }
    }
}

/// SIGINT or SIGTERM, as a supervisor stops the real engines.
async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
