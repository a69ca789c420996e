//! The command line: one module per subcommand.

mod agent_args;
pub mod check;
pub mod daemon;
pub mod finish;
pub mod keygen;
pub mod learn;
pub mod policy;
pub mod run;
pub mod signals;
pub mod signing;
pub mod spawn;
pub mod start;
pub mod verify;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ciwatch",
    version,
    about = "See, and control, what a CI job really does at runtime"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command as the watched job and write its event log and summary.
    Run(run::RunArgs),
    /// Attach an agent to the current CI job in the background; returns once the hooks are attached.
    Start(start::StartArgs),
    /// Seal the job the background agent watched: write the log, the summary and the report.
    Finish(finish::FinishArgs),
    /// Watch the whole host and write one sealed trace per CI job (systemd, Kubernetes).
    Daemon(daemon::DaemonArgs),
    /// Load and attach every hook, then report what this kernel supports.
    Check(check::CheckArgs),
    /// Verify an attestation (bundle or envelope) against the event log it covers.
    Verify(verify::VerifyArgs),
    /// Write an ECDSA P-256 keypair for signing traces.
    Keygen(keygen::KeygenArgs),
    /// Validate an egress policy, or replay recorded traces against one.
    Policy(policy::PolicyArgs),
    /// Propose an egress policy from earlier traces (a directory, or GitHub Actions artifacts).
    Learn(learn::LearnArgs),
}

impl Command {
    /// Runs the subcommand; the result is the process exit code.
    pub async fn execute(self) -> u8 {
        match self {
            Command::Run(args) => run::execute(args).await,
            // main() runs `start` before any runtime exists, because it forks.
            Command::Start(_) => {
                eprintln!(
                    "ciwatch: error: internal: `start` must be launched before the async runtime"
                );
                crate::exit::INTERNAL
            }
            Command::Finish(args) => finish::execute(args).await,
            Command::Daemon(args) => daemon::execute(args).await,
            Command::Check(args) => check::execute(args).await,
            Command::Verify(args) => verify::execute(args).await,
            Command::Keygen(args) => keygen::execute(args).await,
            Command::Policy(args) => policy::execute(args).await,
            Command::Learn(args) => learn::execute(args).await,
        }
    }
}

/// Prints an error the way every subcommand reports failure.
pub fn fail(code: u8, error: &dyn std::error::Error) -> u8 {
    eprintln!("ciwatch: error: {}", crate::error::chain(error));
    code
}
