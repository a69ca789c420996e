//! `ciwatch daemon`: watch the whole host for CI jobs (self-hosted runners under
//! systemd, Kubernetes nodes). The kernel recognises each step launcher as it
//! starts (Runner.Worker, Agent.Worker, gitlab-runner, buildkite-agent, …) and
//! container steps by their environment; every job gets its own sealed trace
//! directory under the state directory when it ends.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::engine::runner_diag;
use crate::attribute::github_log::RunnerLogSource;
use crate::agent::publish::{self, Publisher};
use crate::agent::session::{HostOptions, Recorder, SessionOptions, Target};
use crate::agent::{Agent, AgentOptions};
use crate::attribute::jobs::Registry;
use crate::attribute::launcher;
use crate::attribute::platform::Platform;
use crate::cli::signals::Signals;
use crate::config::Config;
use crate::health::{HealthServer, Metrics};
use crate::store::TraceStore;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub agent: super::agent_args::AgentArgs,
    /// Where each job's trace directory is written
    /// [default: the config's output.dir, else $STATE_DIRECTORY/traces, else /var/lib/ciwatch/traces].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a job without a launcher of its own (gitlab-runner, a Jenkins agent, containers
    /// only) may go without a running step before it is sealed.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub idle_secs: u64,
    /// How each sealed trace is signed (default for the daemon: --sign key, with the node's key:
    /// --signing-key, else ciwatch.key next to the state directory, created on first use).
    #[command(flatten)]
    pub signing: super::signing::SigningArgs,
    /// The node's egress policy: in enforce mode every job on the host is judged by it.
    #[command(flatten)]
    pub policy: crate::enforce::plan::ModeArgs,
}

pub async fn execute(args: DaemonArgs) -> u8 {
    let config = match args.agent.load_config() {
        Ok(c) => c,
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    };
    let state_dir = state_dir(&args, &config);
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        eprintln!(
            "ciwatch: error: cannot create the state directory {}: {e}",
            state_dir.display()
        );
        return crate::exit::OUTPUT_DIR;
    }
    let config_name = args.agent.config_name();
    // Before the signing key: a bad policy is the more useful message.
    let plan = match crate::enforce::plan::plan(&args.policy, config.mode) {
        Ok(plan) => plan,
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    };
    let sign = signing_options(&args, &state_dir);
    match crate::attest::prepare_key(&sign) {
        Ok(Some(key)) => tracing::info!(
            "signing sealed traces with {} (key id {})",
            key.private_path.display(),
            key.key_id
        ),
        Ok(None) => {}
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    }
    let mut agent = match Agent::load(&AgentOptions {
        config: &config,
        config_name: &config_name,
        btf: args.agent.btf.as_deref(),
        require_all: !args.agent.allow_partial,
        plan: &plan,
    }) {
        Ok(a) => a,
        Err(e) => return super::fail(e.exit_code(), &e),
    };
    let names = launcher::names();
    let mut registry = Registry::new();
    let existing = match agent
        .watch_launcher_names(&names)
        .and_then(|()| agent.watch_container_runtimes())
        .and_then(|()| agent.adopt_running_launchers(&mut registry, &names))
    {
        Ok(found) => found,
        Err(e) => return super::fail(e.exit_code(), &e),
    };

    let metrics = Metrics::new();
    for h in &agent.probes.hooks {
        metrics.set_hook(h.hook, &h.implementation, h.attached);
    }
    let health = match config.health.listen {
        Some(addr) => {
            match HealthServer::start(addr, metrics.clone(), config.health.options()).await {
                Ok(server) => Some(server),
                Err(e) => return super::fail(crate::exit::INTERNAL, &e),
            }
        }
        None => None,
    };
    let store = match TraceStore::from_config(&config.output) {
        Ok(store) => store,
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    };
    let (sealed, publishing) = Publisher {
        sign,
        store,
        keep_local: config.output.keep_local,
        metrics: metrics.clone(),
    }
    .spawn(&state_dir);
    let runner_logs = existing
        .iter()
        .filter(|l| l.platform == Platform::GithubActions)
        .filter_map(|l| {
            Some(RunnerLogSource {
                diag: runner_diag(l.pid)?,
                worker: l.pid,
            })
        })
        .collect();
    let recorder = match Recorder::start(
        agent,
        SessionOptions {
            config: &config,
            plan: &plan,
            registry,
            target: Target::Host {
                root: state_dir.clone(),
                host: HostOptions {
                    idle: Duration::from_secs(args.idle_secs),
                    metrics: metrics.clone(),
                    sealed,
                },
            },
            command: &[],
            runner_logs,
            sudo_disabled: None,
        },
    ) {
        Ok(r) => r,
        Err(e) => return super::fail(e.exit_code(), &e),
    };
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return super::fail(crate::exit::INTERNAL, &e),
    };
    metrics.set_ready();
    tracing::info!("watching for CI jobs; traces go to {}", state_dir.display());
    eprintln!(
        "ciwatch: daemon ready; traces go to {}",
        state_dir.display()
    );
    let signal = signals.any().await;
    tracing::info!("signal {signal}: sealing open jobs and stopping");
    metrics.set_not_ready("stopping");
    let code = match recorder.stop().await {
        Ok(stopped) => {
            stopped.seal_open_jobs();
            0
        }
        Err(e) => super::fail(e.exit_code(), &e),
    };
    // The engine (and with it the channel's sender) is gone: let the last jobs be signed and uploaded.
    if tokio::time::timeout(publish::GRACE, publishing)
        .await
        .is_err()
    {
        tracing::error!("signing or uploading the last traces took over {:?}; unsigned ones are signed at the next start", publish::GRACE);
    }
    if let Some(server) = health {
        server.shutdown().await;
    }
    code
}

fn state_dir(args: &DaemonArgs, config: &Config) -> PathBuf {
    args.state_dir
        .clone()
        .or_else(|| config.output.dir.clone())
        .unwrap_or_else(crate::store::default_trace_dir)
}

/// The node's signing choice: `--sign` (default key) with `--signing-key`, else
/// a key created next to the state directory (StateDirectory= under systemd, a
/// hostPath on Kubernetes) so that it survives restarts.
fn signing_options(args: &DaemonArgs, state_dir: &std::path::Path) -> crate::attest::SignOptions {
    let mut sign = args.signing.options(crate::attest::SignMode::Key);
    if args.signing.signing_key.is_none() {
        let keys = state_dir.parent().unwrap_or(state_dir).to_path_buf();
        sign.key = crate::attest::KeySource::CreateIn(keys);
    }
    sign
}
