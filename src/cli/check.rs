//! `ciwatch check`: load and attach everything, then report the kernel
//! features found and the implementation each hook would use.

use std::path::PathBuf;

use crate::bpf::loader;
use crate::bpf::preflight;
use crate::config::{Config, ConfigError};
use crate::event::HookStatus;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Agent configuration (TOML) whose sensitive paths to load.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn execute(args: CheckArgs) -> u8 {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return super::fail(crate::exit::CONFIG, &e),
    };
    let sensitive = match config.sensitive_paths() {
        Ok(s) => s,
        Err(source) => {
            return super::fail(
                crate::exit::CONFIG,
                &ConfigError::Rule {
                    path: "config".into(),
                    source,
                },
            )
        }
    };
    let env = match preflight::check(args.btf.as_deref()) {
        Ok(env) => env,
        Err(e) => return super::fail(crate::exit::preflight(&e), &e),
    };
    // Tries the DNS-refusal filter too, so users learn before an enforce run whether it works.
    let refusal = loader::Enforcement {
        egress: false,
        refuse_dns: true,
    };
    let probes = match loader::load(&crate::agent::load_options(
        &config, &env, &sensitive, refusal, false,
    )) {
        Ok(p) => p,
        Err(e) => return super::fail(crate::exit::HOOKS, &e),
    };
    let features = features();
    if args.json {
        let report = serde_json::json!({
            "kernel": env.kernel,
            "btf": env.btf,
            "cgroup2": env.cgroup2,
            "mounted": env.mounted,
            "features": features.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "hooks": probes.hooks,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&env, &features, &probes.hooks);
    }
    match probes
        .hooks
        .iter()
        .find(|h| !h.attached && !h.disabled && !optional(h))
    {
        None => 0,
        Some(h) => {
            let reasons: Vec<String> = h
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.implementation, s.reason))
                .collect();
            eprintln!(
                "ciwatch: error: required hook `{}` cannot work on this kernel: {}",
                h.hook,
                reasons.join("; ")
            );
            crate::exit::HOOKS
        }
    }
}

/// A hook only enforce mode with `dns.refuse-unlisted` needs: reported, never a failure of `check`.
fn optional(h: &HookStatus) -> bool {
    h.hook == loader::DNS_REFUSAL
}

/// Kernel facts that decide the hook implementations.
fn features() -> Vec<(&'static str, serde_json::Value)> {
    let exists = |p: &str| serde_json::Value::Bool(std::path::Path::new(p).exists());
    vec![
        ("btf", exists(preflight::SYS_BTF)),
        ("kprobe_pmu", exists("/sys/bus/event_source/devices/kprobe")),
        ("uprobe_pmu", exists("/sys/bus/event_source/devices/uprobe")),
        (
            "cgroup2",
            serde_json::Value::Bool(preflight::cgroup2_mount().is_some()),
        ),
        (
            "lsm",
            serde_json::Value::String(
                std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default(),
            ),
        ),
    ]
}

fn print_report(
    env: &preflight::Environment,
    features: &[(&str, serde_json::Value)],
    hooks: &[HookStatus],
) {
    println!("kernel      {}", env.kernel);
    println!("btf         {}", env.btf.display());
    println!(
        "cgroup v2   {}",
        env.cgroup2
            .as_ref()
            .map_or("not mounted".to_string(), |p| p.display().to_string())
    );
    if !env.mounted.is_empty() {
        println!("mounted     {}", env.mounted.join(", "));
    }
    for (name, value) in features {
        println!("feature     {name}: {value}");
    }
    println!();
    for h in hooks {
        let state = match (h.attached, h.disabled) {
            (true, _) => "ok  ",
            (false, true) => "off ",
            (false, false) if optional(h) => "n/a ",
            (false, false) => "FAIL",
        };
        println!(
            "[{state}] {:<11} {}",
            h.hook,
            if h.attached {
                h.implementation.as_str()
            } else {
                "no implementation attached"
            }
        );
        for t in &h.targets {
            println!("              target: {t}");
        }
        for s in &h.skipped {
            println!("              skipped {}: {}", s.implementation, s.reason);
        }
    }
}
