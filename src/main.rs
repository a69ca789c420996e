use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CIWATCH_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ciwatch::tls::install_default_provider();
    let cli = ciwatch::cli::Cli::parse();
    // `start` forks its background agent, which must happen before any thread exists.
    if let ciwatch::cli::Command::Start(args) = cli.command {
        return ExitCode::from(ciwatch::cli::start::launch(args));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ciwatch: error: cannot start the async runtime: {e}");
            return ExitCode::from(ciwatch::exit::INTERNAL);
        }
    };
    let code = runtime.block_on(cli.command.execute());
    // Do not wait for blocked helper threads (a waitpid on a daemon, say).
    runtime.shutdown_background();
    ExitCode::from(code)
}
