//! `ciwatch daemon`: watch the whole host for CI jobs (self-hosted runners under
//! systemd, Kubernetes nodes). The kernel recognises each step launcher as it
//! starts (Runner.Worker, Agent.Worker, gitlab-runner, buildkite-agent, …) and
//! container steps by their environment; every job gets its own sealed trace
//! directory under the state directory when it ends.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::engine::{runner_diag, DaemonState, Engine, Outputs};
use crate::agent::Agent;
use crate::attribute::jobs::{is_long_lived, Registry};
use crate::attribute::platform::{self, Platform};
use crate::attribute::Attributor;
use crate::cli::run::trace_start;
use crate::cli::signals::Signals;
use crate::config::Config;
use crate::event::JobRef;
use crate::health::{HealthServer, Metrics};
use crate::pipeline::Pipeline;
use crate::store::TraceStore;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub agent: super::agent_args::AgentArgs,
    /// Where each job's trace directory is written
    /// [default: the config's output.dir, else $STATE_DIRECTORY/traces, else /var/lib/ciwatch/traces].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a job seen only in containers may stay without live processes before it is sealed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub idle_secs: u64,
    /// How each sealed trace is signed (default for the daemon: --sign key, with the node's key:
    /// --signing-key, else ciwatch.key next to the state directory, created on first use).
    #[command(flatten)]
    pub signing: super::signing::SigningArgs,
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
    if config.mode == crate::config::Mode::Enforce {
        eprintln!("ciwatch: error: {config_name}: mode = \"enforce\" needs a per-job policy, which the daemon does not have; enforce with `ciwatch start --mode enforce` inside the job, or use observe/learn here");
        return crate::exit::CONFIG;
    }
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
    let mut agent = match Agent::load(
        &config,
        &config_name,
        args.agent.btf.as_deref(),
        !args.agent.allow_partial,
        Default::default(),
    ) {
        Ok(a) => a,
        Err(e) => return super::fail(e.exit_code(), &e),
    };
    let names: Vec<(&str, u32)> = platform::detectors()
        .iter()
        .flat_map(|d| {
            d.launcher_comms()
                .iter()
                .map(move |c| (*c, d.platform().id()))
        })
        .collect();
    if let Err(e) = agent
        .watch_launcher_names(&names)
        .and_then(|()| agent.watch_container_runtimes())
    {
        return super::fail(e.exit_code(), &e);
    }
    let mut registry = Registry::new();
    let existing = match adopt_running_launchers(&mut agent, &mut registry, &names) {
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
    let observe = match crate::enforce::plan::plan(&Default::default(), config.mode) {
        Ok(plan) => plan,
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    };
    let header = trace_start(
        &agent,
        &config,
        &observe,
        &JobRef {
            platform: "none".into(),
            id: String::new(),
        },
        &[],
    );
    let outputs = Outputs::PerJob {
        root: state_dir.clone(),
        header,
        open: Default::default(),
        errors: Vec::new(),
    };
    let mut state = DaemonState::new(
        agent.probes.tasks.clone(),
        agent.probes.lost.clone(),
        agent.probes.hooks.clone(),
        Duration::from_millis(config.run.linger_ms),
        Duration::from_secs(args.idle_secs),
        metrics.clone(),
    );
    let store = match TraceStore::from_config(&config.output) {
        Ok(store) => store,
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    };
    let (sealed_jobs, post_seal) = spawn_post_seal(
        PostSeal {
            sign,
            store,
            keep_local: config.output.keep_local,
            metrics: metrics.clone(),
        },
        &state_dir,
    );
    state.sealed_jobs = Some(sealed_jobs);
    let mut engine = Engine::new(
        Attributor::new(registry, config.capture_args, agent.sensitive.clone()),
        outputs,
    )
    .with_daemon(state);
    for (pid, platform) in &existing {
        if *platform == Platform::GithubActions {
            if let Some(diag) = runner_diag(*pid) {
                engine.follow_runner_log(&diag);
            }
        }
    }
    let Some(ring) = agent.probes.take_ring() else {
        return crate::exit::INTERNAL;
    };
    let drain = Duration::from_millis(config.ring.drain_interval_ms);
    let pipeline = match Pipeline::start(ring, drain, Duration::from_millis(250), engine) {
        Ok(p) => p,
        Err(e) => return super::fail(crate::exit::INTERNAL, &e),
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
    let code = match pipeline.finish().await {
        Ok(mut engine) => {
            engine.seal_all();
            0
        }
        Err(e) => super::fail(crate::exit::INTERNAL, &e),
    };
    // The engine (and with it the channel's sender) is gone: let the last jobs be signed and uploaded.
    if tokio::time::timeout(POST_SEAL_GRACE, post_seal)
        .await
        .is_err()
    {
        tracing::error!("signing or uploading the last traces took over {POST_SEAL_GRACE:?}; unsigned ones are signed at the next start");
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
        .or_else(|| std::env::var_os("STATE_DIRECTORY").map(|d| PathBuf::from(d).join("traces")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/ciwatch/traces"))
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

/// What happens to a job's directory once it is sealed.
struct PostSeal {
    sign: crate::attest::SignOptions,
    store: Option<TraceStore>,
    keep_local: bool,
    metrics: std::sync::Arc<Metrics>,
}

/// Signs, then uploads, sealed traces in order. A trace whose signing fails
/// keeps the failure in its summary; a failed upload stays on disk and is
/// retried at the next start.
fn spawn_post_seal(
    post: PostSeal,
    root: &std::path::Path,
) -> (
    tokio::sync::mpsc::UnboundedSender<PathBuf>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    for pending in unfinished(root, post.store.is_some()) {
        let _ = tx.send(pending);
    }
    let worker = tokio::spawn(async move {
        while let Some(dir) = rx.recv().await {
            if !dir.join(crate::attest::ENVELOPE_FILE).exists() {
                sign_sealed(&dir, &post.sign).await;
            }
            let Some(store) = &post.store else { continue };
            match store.upload(&dir, post.keep_local).await {
                Ok(_) => post.metrics.set_output_ok(true),
                Err(e) => {
                    tracing::error!("upload of {} failed (kept on disk): {e}", dir.display());
                    post.metrics.output_error(e.failure());
                }
            }
        }
    });
    (tx, worker)
}

/// How long a stopping daemon waits for the last traces to be signed and uploaded.
const POST_SEAL_GRACE: Duration = Duration::from_secs(60);

/// Sealed traces a previous run left unsigned (or, with a store, not uploaded).
fn unfinished(root: &std::path::Path, uploading: bool) -> Vec<PathBuf> {
    let mut dirs = if uploading {
        crate::store::pending_uploads(root).unwrap_or_default()
    } else {
        Vec::new()
    };
    let sealed = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for dir in sealed {
        let signed = dir.join(crate::attest::ENVELOPE_FILE).exists();
        if !signed && dir.join("events.ndjson").exists() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Signs one sealed trace and adds the outcome to its summary.
async fn sign_sealed(dir: &std::path::Path, sign: &crate::attest::SignOptions) {
    if sign.mode == crate::attest::SignMode::None {
        return;
    }
    let signed = crate::attest::sign_trace(dir, sign).await;
    match &signed {
        Ok(_) => tracing::info!("signed {}", dir.display()),
        Err(e) => tracing::error!("signing {} failed: {e}", dir.display()),
    }
    let summary = dir.join("summary.md");
    let text = std::fs::read_to_string(&summary).unwrap_or_default()
        + &crate::attest::summary_markdown(&signed, dir);
    if let Err(e) = crate::sink::write_atomically(&summary, text.as_bytes()) {
        tracing::error!(
            "cannot add the signing result to {}: {e}",
            summary.display()
        );
    }
}

/// Launchers already running when the daemon starts: their later steps are still attributed.
fn adopt_running_launchers(
    agent: &mut Agent,
    registry: &mut Registry,
    names: &[(&str, u32)],
) -> Result<Vec<(u32, Platform)>, crate::agent::AgentError> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Ok(found);
    };
    let mut next_job = 2;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let Some((_, id)) = names
            .iter()
            .find(|(n, _)| crate::bpf::abi::CommKey::new(n) == crate::bpf::abi::CommKey::new(comm))
        else {
            continue;
        };
        let platform = Platform::from_id(*id);
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        agent.add_launcher(pid, next_job, *id)?;
        registry.register_launcher(next_job, platform, is_long_lived(Some(platform), &argv));
        tracing::info!(
            "adopted running {comm} (pid {pid}) as a {} launcher",
            platform.name()
        );
        found.push((pid, platform));
        next_job += 1;
    }
    Ok(found)
}
