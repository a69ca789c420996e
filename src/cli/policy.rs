//! `ciwatch policy check FILE` and `ciwatch policy diff --policy FILE TRACE…`
//! (docs/policy.md).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::policy::diff::diff;
use crate::policy::trace::{self, Trace};
use crate::policy::{self, Mode, Policy, Target};

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: a one-line summary, or the error with its line (exit 78).
    Check(CheckArgs),
    /// Show what a policy would have denied in recorded traces (exit 1 if anything).
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The policy file (YAML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The policy file to replay the traces against.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// An extra allowed endpoint, as with `run --allow` (repeatable).
    #[arg(long = "allow", value_name = "ENDPOINT")]
    pub allow: Vec<String>,
    /// The resolver(s) of the host the traces were recorded on, for
    /// `defaults.resolver` (repeatable). Default: this host's /etc/resolv.conf.
    #[arg(long = "resolver", value_name = "ADDR")]
    pub resolvers: Vec<IpAddr>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Sealed event logs (events.ndjson) or trace directories.
    #[arg(value_name = "TRACE", required = true)]
    pub traces: Vec<PathBuf>,
}

pub async fn execute(args: PolicyArgs) -> u8 {
    match args.command {
        PolicyCommand::Check(a) => check(&a),
        PolicyCommand::Diff(a) => run_diff(&a),
    }
}

fn check(args: &CheckArgs) -> u8 {
    let parsed = match policy::load(&args.file) {
        Ok(p) => p,
        Err(e) => return report_error(args.json, &crate::error::chain(&e), e.line()),
    };
    if let Err(e) = parsed.policy.validate() {
        return report_error(args.json, &crate::error::chain(&e), None);
    }
    let p = &parsed.policy;
    let warnings: Vec<String> = parsed
        .warnings
        .iter()
        .map(|w| format!("{}:{}: {}", args.file.display(), w.line, w.message))
        .collect();
    if args.json {
        let out = serde_json::json!({ "ok": true, "summary": summary(p), "policy": p, "warnings": warnings });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for w in &warnings {
            eprintln!("ciwatch: warning: {w}");
        }
        println!("{}: ok: {}", args.file.display(), summary(p));
    }
    0
}

fn report_error(json: bool, message: &str, line: Option<u32>) -> u8 {
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": false, "error": message, "line": line })
        );
    } else {
        eprintln!("ciwatch: error: {message}");
    }
    crate::exit::CONFIG
}

/// `version 1, mode enforce, 6 rules (3 names, 1 wildcard, 2 addresses; 1 step-scoped), …`
pub fn summary(p: &Policy) -> String {
    let count = |f: fn(&Target) -> bool| p.rules.iter().filter(|r| f(&r.endpoint.target)).count();
    let names = count(|t| matches!(t, Target::Host(_)));
    let wildcards = count(|t| matches!(t, Target::Wildcard(_)));
    let nets = count(|t| matches!(t, Target::Net(_)));
    let scoped = p.rules.iter().filter(|r| !r.steps.is_any()).count();
    let mut defaults: Vec<&str> = Vec::new();
    if p.defaults.loopback {
        defaults.push("loopback");
    }
    if p.defaults.resolver {
        defaults.push("resolver");
    }
    let defaults = if defaults.is_empty() {
        "none".to_string()
    } else {
        defaults.join("+")
    };
    let dns = if p.dns.refuse_unlisted {
        "refuse unlisted"
    } else {
        "report unlisted"
    };
    let on_error = match p.on_policy_error {
        policy::OnPolicyError::Fail => "fail",
        policy::OnPolicyError::Observe => "observe",
    };
    let egress = if p.no_egress { ", no egress" } else { "" };
    let sockets = if p.sockets.is_empty() {
        String::new()
    } else {
        let listed: Vec<String> = p.sockets.iter().map(|s| s.describe()).collect();
        format!(", sockets {}", listed.join(", "))
    };
    format!(
        "version {}, mode {}, {} rules ({names} names, {wildcards} wildcards, {nets} addresses/CIDRs; {scoped} step-scoped){egress}, \
         defaults {defaults}, dns {dns}{sockets}, on-policy-error {on_error}, sha256 {}",
        p.version,
        p.mode,
        p.rules.len(),
        p.digest
    )
}

fn run_diff(args: &DiffArgs) -> u8 {
    let policy = match &args.policy {
        Some(path) => policy::load(path)
            .map_err(|e| crate::error::chain(&e))
            .and_then(|p| {
                let mut policy = p.policy;
                policy
                    .add_endpoints(&args.allow)
                    .map(|()| policy)
                    .map_err(|e| e.to_string())
            }),
        None if !args.allow.is_empty() => {
            Policy::from_endpoints(Mode::Enforce, &args.allow).map_err(|e| e.to_string())
        }
        None => {
            eprintln!(
                "ciwatch: error: policy diff needs --policy FILE or at least one --allow ENDPOINT"
            );
            return crate::exit::USAGE;
        }
    };
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ciwatch: error: {e}");
            return crate::exit::CONFIG;
        }
    };
    let traces = match read_traces(&args.traces) {
        Ok(t) => t,
        Err(e) => return super::fail(crate::exit::TRACE_INPUT, &e),
    };
    let resolvers = if args.resolvers.is_empty() {
        policy::resolv::system_nameservers()
    } else {
        args.resolvers.clone()
    };
    let compiled = policy.compiled_with(&resolvers);
    let report = diff(&policy, &compiled, &resolvers, &traces);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    if report.would_deny() {
        crate::exit::WOULD_DENY
    } else {
        0
    }
}

fn read_traces(paths: &[PathBuf]) -> Result<Vec<Trace>, trace::TraceError> {
    paths.iter().map(|p| trace::read_path(p)).collect()
}
