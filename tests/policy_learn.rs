//! `ciwatch learn --dir`: five fixture runs of one job (tests/fixtures/policy/
//! make-traces.py) whose egress varies, and one compromised run.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ciwatch::policy::trace::{self, Trace};
use ciwatch::policy::{CompiledPolicy, Decision};
use serde_json::Value;

const CIWATCH: &str = env!("CARGO_BIN_EXE_ciwatch");

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(rel)
}

fn learn(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(CIWATCH)
        .arg("learn")
        .args(args)
        .output()
        .expect("spawn ciwatch");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Learns from the given directory; returns (proposal text, coverage JSON, stderr).
fn learn_dir(dir: &Path, extra: &[&str]) -> (String, Value, String) {
    let out = tempfile::tempdir().unwrap();
    let policy = out.path().join("policy.yml");
    let coverage = out.path().join("coverage.json");
    let mut args = vec![
        "--dir".to_string(),
        s(dir),
        "--out".into(),
        s(&policy),
        "--coverage".into(),
        s(&coverage),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = learn(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.is_empty(),
        "with --out nothing goes to stdout: {stdout}"
    );
    let yaml = std::fs::read_to_string(&policy).unwrap();
    let cov: Value = serde_json::from_str(&std::fs::read_to_string(&coverage).unwrap()).unwrap();
    (yaml, cov, stderr)
}

fn compiled(yaml: &str) -> CompiledPolicy {
    let parsed = ciwatch::policy::parse(yaml.as_bytes(), "proposal")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    parsed.policy.validate().unwrap();
    // The resolver is not on the recording hosts' list here: only rules count.
    parsed.policy.compiled_with(&[])
}

fn runs() -> Vec<Trace> {
    (1..=5)
        .map(|i| trace::read_path(&fixture(&format!("runs/run-{i}"))).unwrap())
        .collect()
}

fn entry<'a>(cov: &'a Value, endpoint: &str) -> &'a Value {
    cov["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no entry {endpoint} in {cov:#}"))
}

#[test]
fn learns_names_wildcards_and_addresses_with_coverage() {
    let (yaml, cov, stderr) = learn_dir(&fixture("runs"), &[]);
    assert!(!stderr.contains("too few"), "5 jobs are enough: {stderr}");
    assert_eq!(cov["jobs"], 5);
    assert_eq!(cov["trusted"], true);
    let endpoints: Vec<&str> = cov["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    // Sorted: names by domain, then addresses; loopback (127.0.0.53, 127.0.0.1) never listed.
    assert_eq!(
        endpoints,
        [
            "github.com:443/tcp",
            "objects.githubusercontent.com:443/tcp",
            "ipv6.example.net:443/tcp",
            "*.cdn.example-pkgs.net:443/tcp",
            "uploads.example.org:443/tcp",
            "registry.npmjs.org:443/tcp",
            "198.51.100.7:8443/tcp",
            "203.0.113.10:9000/tcp",
            "203.0.113.11:9000/tcp",
        ]
    );
    let jobs = |e: &str| entry(&cov, e)["jobs"].as_u64().unwrap();
    assert_eq!(jobs("github.com:443/tcp"), 5);
    assert_eq!(jobs("objects.githubusercontent.com:443/tcp"), 4);
    assert_eq!(jobs("uploads.example.org:443/tcp"), 1);
    assert_eq!(jobs("203.0.113.10:9000/tcp"), 2);
    assert_eq!(jobs("203.0.113.11:9000/tcp"), 3);
    assert_eq!(
        entry(&cov, "registry.npmjs.org:443/tcp")["steps"],
        serde_json::json!(["Install"])
    );
    assert_eq!(
        entry(&cov, "github.com:443/tcp")["steps"],
        serde_json::json!(["Run actions/checkout@v4"])
    );
    let cdn = entry(&cov, "*.cdn.example-pkgs.net:443/tcp");
    assert_eq!(cdn["jobs"], 5);
    assert_eq!(cdn["kind"], "wildcard");
    let names: Vec<&str> = cdn["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "a.cdn.example-pkgs.net",
            "b.cdn.example-pkgs.net",
            "c.cdn.example-pkgs.net",
            "d.cdn.example-pkgs.net",
            "e.cdn.example-pkgs.net"
        ]
    );

    // Unstable: under half the jobs, or an address that moved between runs.
    let unstable = |e: &str| entry(&cov, e)["unstable"].as_array().unwrap().len();
    assert_eq!(
        unstable("github.com:443/tcp"),
        0,
        "a name whose addresses change is fine: DNS drives it"
    );
    assert!(entry(&cov, "github.com:443/tcp")["notes"][0]
        .as_str()
        .unwrap()
        .contains("addresses changed between runs (2 distinct)"));
    assert_eq!(
        unstable("objects.githubusercontent.com:443/tcp"),
        0,
        "4 of 5 is over half"
    );
    assert_eq!(unstable("uploads.example.org:443/tcp"), 1);
    assert_eq!(unstable("198.51.100.7:8443/tcp"), 0);
    assert_eq!(
        unstable("203.0.113.10:9000/tcp"),
        2,
        "under half, and rotating"
    );
    assert_eq!(unstable("203.0.113.11:9000/tcp"), 1, "rotating");
    assert_eq!(
        cov["resolved_only"],
        serde_json::json!(["telemetry.example.com (5/5 jobs)"])
    );

    // The YAML carries the same coverage as comments.
    assert!(yaml.contains("  # UNSTABLE: seen in 1 of 5 jobs (under half)\n  # 1/5 jobs; steps: Publish; 1 connect; at 198.51.100.20\n  - \"uploads.example.org:443/tcp\"\n"), "{yaml}");
    assert!(yaml.contains("  # 4/5 jobs; steps: Build; 4 connects; at 185.199.108.133\n  - \"objects.githubusercontent.com:443/tcp\"\n"), "{yaml}");
    assert!(!yaml.contains("127.0.0"), "loopback stays implicit: {yaml}");
}

#[test]
fn the_proposal_allows_every_fixture_destination_and_denies_a_new_one() {
    let (yaml, _, _) = learn_dir(&fixture("runs"), &[]);
    let policy = compiled(&yaml);
    let mut checked = 0;
    for t in runs() {
        for c in &t.connects {
            let d = policy.allows(c.addr, c.port, c.proto(), &c.step.as_match(), &c.hosts);
            assert!(
                d.is_allowed(),
                "{}: {}:{} ({:?}) in {} denied",
                t.origin,
                c.addr,
                c.port,
                c.hosts,
                c.step.label()
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked}");
    let evil = trace::read_path(&fixture("compromised")).unwrap();
    let exfil: Vec<_> = evil
        .connects
        .iter()
        .filter(|c| c.addr.to_string() == "45.33.32.156" || c.port == 53 && !c.addr.is_loopback())
        .collect();
    assert_eq!(exfil.len(), 2);
    for c in exfil {
        assert_eq!(
            policy.allows(c.addr, c.port, c.proto(), &c.step.as_match(), &c.hosts),
            Decision::Deny,
            "{c:?}"
        );
    }
    // A new subdomain of the learned wildcard is allowed, its parent and a sibling domain are not.
    let step = ciwatch::policy::StepMatch::new("x", Some("Install"));
    let tcp = Some(ciwatch::policy::Proto::Tcp);
    let a = "192.0.2.99".parse().unwrap();
    assert!(policy
        .allows(a, 443, tcp, &step, &["z.cdn.example-pkgs.net".into()])
        .is_allowed());
    assert!(!policy
        .allows(a, 443, tcp, &step, &["cdn.example-pkgs.net".into()])
        .is_allowed());
    assert!(!policy
        .allows(a, 443, tcp, &step, &["z.cdn.example-pkgs.org".into()])
        .is_allowed());
    assert!(
        !policy
            .allows(a, 80, tcp, &step, &["github.com".into()])
            .is_allowed(),
        "learned ports stick"
    );
}

#[test]
fn learning_is_deterministic() {
    let (first, _, _) = learn_dir(&fixture("runs"), &[]);
    // The same traces in another layout give the same policy, but for the source lines.
    let copy = tempfile::tempdir().unwrap();
    for i in (1..=5).rev() {
        std::fs::copy(
            fixture(&format!("runs/run-{i}/events.ndjson")),
            copy.path().join(format!("{i}.ndjson")),
        )
        .unwrap();
    }
    let (second, _, _) = learn_dir(copy.path(), &[]);
    let body = |y: &str| {
        y.lines()
            .filter(|l| !l.starts_with("#   from "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&first), body(&second));
    let (again, _, _) = learn_dir(&fixture("runs"), &[]);
    assert_eq!(first, again);
}

#[test]
fn per_step_rules_allow_only_in_their_steps() {
    let (yaml, cov, stderr) = learn_dir(&fixture("runs"), &["--per-step"]);
    assert!(yaml.contains("  - { host: \"registry.npmjs.org\", port: 443, protocol: tcp, steps: [\"Install\"] }\n"), "{yaml}");
    assert_eq!(
        entry(&cov, "registry.npmjs.org:443/tcp")["step_scoped"],
        true
    );
    let policy = compiled(&yaml);
    for t in runs() {
        for c in &t.connects {
            assert!(
                policy
                    .allows(c.addr, c.port, c.proto(), &c.step.as_match(), &c.hosts)
                    .is_allowed(),
                "{c:?}: {stderr}"
            );
        }
    }
    let npm = ["registry.npmjs.org".to_string()];
    let a = "104.16.0.35".parse().unwrap();
    let tcp = Some(ciwatch::policy::Proto::Tcp);
    assert!(policy
        .allows(
            a,
            443,
            tcp,
            &ciwatch::policy::StepMatch::new("new-guid", Some("Install")),
            &npm
        )
        .is_allowed());
    assert_eq!(
        policy.allows(
            a,
            443,
            tcp,
            &ciwatch::policy::StepMatch::new("new-guid", Some("Build")),
            &npm
        ),
        Decision::Deny,
        "the same destination from another step"
    );
}

#[test]
fn wildcard_threshold_is_k() {
    let (yaml, cov, _) = learn_dir(&fixture("runs"), &["--wildcard-min", "6"]);
    assert!(!yaml.contains("- \"*."), "5 names < K=6: {yaml}");
    assert!(
        yaml.contains("# Names with 6+ subdomains on one port became `*.` wildcards."),
        "{yaml}"
    );
    assert_eq!(entry(&cov, "a.cdn.example-pkgs.net:443/tcp")["jobs"], 2);
    assert_eq!(entry(&cov, "e.cdn.example-pkgs.net:443/tcp")["jobs"], 1);
}

#[test]
fn too_few_jobs_say_so() {
    let dir = tempfile::tempdir().unwrap();
    for i in [1, 2] {
        std::fs::copy(
            fixture(&format!("runs/run-{i}/events.ndjson")),
            dir.path().join(format!("r{i}.ndjson")),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("broken.ndjson"),
        "{\"type\":\"trace_start\"}\n",
    )
    .unwrap();
    let (yaml, cov, stderr) = learn_dir(dir.path(), &[]);
    assert_eq!(cov["jobs"], 2);
    assert_eq!(cov["trusted"], false);
    assert!(
        yaml.contains("# WARNING: 2 jobs are too few to trust (want at least 5)"),
        "{yaml}"
    );
    assert!(
        stderr.contains("learned from 2 job(s); fewer than 5 are too few to trust"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipped") && stderr.contains("broken.ndjson"),
        "{stderr}"
    );
}

#[test]
fn diff_against_an_existing_policy() {
    let old = fixture("ci-policy.yml");
    let (code, out, err) = learn(&["--dir", &s(&fixture("runs")), "--diff", &s(&old)]);
    assert_eq!(
        code, 0,
        "the fixture policy allows all five runs: {out}{err}"
    );
    assert!(
        out.contains(
            "+ 203.0.113.10:9000/tcp    # 2/5 jobs; steps: Test; already allowed by the old policy"
        ),
        "{out}"
    );
    assert!(
        out.contains("- unused.example.com:443    # line 23; not used by these jobs"),
        "{out}"
    );
    assert!(out.contains("- 203.0.113.0/24:9000/tcp    # line 21; used; the proposal covers it with the rules above"), "{out}");
    assert!(
        out.contains("The old policy allows everything these jobs did."),
        "{out}"
    );
    assert!(
        !out.contains("+ github.com:443/tcp"),
        "unchanged rules are not listed: {out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let narrow = dir.path().join("narrow.yml");
    std::fs::write(
        &narrow,
        "version: 1\nmode: enforce\nallow:\n  - github.com:443/tcp\n",
    )
    .unwrap();
    let (code, out, _) = learn(&["--dir", &s(&fixture("runs")), "--diff", &s(&narrow)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("+ registry.npmjs.org:443/tcp    # 5/5 jobs; steps: Install\n"),
        "{out}"
    );
    assert!(out.contains("The old policy would deny"), "{out}");

    let (code, _, err) = learn(&[
        "--dir",
        &s(&fixture("runs")),
        "--diff",
        &s(&fixture("bad/host-bits.yml")),
    ]);
    assert_eq!(code, 78, "{err}");
}

#[test]
fn learn_without_traces_or_source_fails_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = learn(&["--dir", &s(empty.path())]);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("no sealed trace found"), "{err}");
    let (code, _, err) = learn(&[]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = learn(&["--dir", &s(&fixture("runs")), "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["policy"]
        .as_str()
        .unwrap()
        .starts_with("# Proposed by `ciwatch learn` from 5 jobs."));
    assert_eq!(v["coverage"]["entries"].as_array().unwrap().len(), 9);
}

/// `--config` reads the traces where the daemon's configuration puts them (here its `[output] dir`).
#[test]
fn learns_from_the_daemons_trace_directory_named_by_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[output]\ndir = \"{}\"\n", s(&fixture("runs"))),
    )
    .unwrap();
    let (code, stdout, stderr) = learn(&["--config", &s(&config), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let from_config: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(from_config["coverage"]["jobs"], 5, "{stdout}");
    // The same rules as from the directory itself (only the order of the `from` lines differs:
    // newest first here).
    let (_, coverage, _) = learn_dir(&fixture("runs"), &[]);
    assert_eq!(from_config["coverage"]["entries"], coverage["entries"]);

    let (code, stdout, stderr) = learn(&["--config", &s(&config), "--runs", "2", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let two: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(two["coverage"]["jobs"], 2, "{stdout}");
}

#[test]
fn a_name_longer_than_a_rule_can_hold_is_proposed_by_address_and_says_why() {
    let long = format!("{}.example.com", ["a".repeat(60), "b".repeat(60)].join("."));
    assert!(long.len() > 127);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run-1");
    std::fs::create_dir_all(&run).unwrap();
    let events = std::fs::read_to_string(fixture("runs/run-1/events.ndjson")).unwrap();
    std::fs::write(
        run.join("events.ndjson"),
        events.replace(r#""hosts":["github.com"]"#, &format!(r#""hosts":["{long}"]"#)),
    )
    .unwrap();
    let (yaml, cov, _) = learn_dir(dir.path(), &[]);
    assert!(
        !yaml.lines().any(|l| !l.trim_start().starts_with('#') && l.contains(&long)),
        "only comments may name it: {yaml}"
    );
    compiled(&yaml);
    let e = entry(&cov, "140.82.112.3:443/tcp");
    assert!(
        e["notes"][0]
            .as_str()
            .unwrap()
            .contains("longer than the 127 bytes a name rule can hold"),
        "{e}"
    );
}

#[test]
fn the_sockets_the_jobs_opened_are_proposed_and_an_old_policy_without_them_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let start = r#"{"type":"trace_start","schema":"ciwatch.events/v1","mode":"observe","job":{"platform":"none","id":"j"}}"#;
    let end = r#"{"type":"trace_end","complete":true}"#;
    for (run, classes) in [("a", &["ping", "raw"][..]), ("b", &["ping"][..])] {
        let mut lines = vec![start.to_string()];
        for (seq, class) in classes.iter().enumerate() {
            lines.push(format!(
                r#"{{"type":"socket","seq":{seq},"step":{{"id":"s","name":"Net"}},"class":"{class}"}}"#
            ));
        }
        lines.push(end.to_string());
        let trace = dir.path().join(run);
        std::fs::create_dir_all(&trace).unwrap();
        std::fs::write(trace.join("events.ndjson"), lines.join("\n") + "\n").unwrap();
    }
    let (yaml, cov, _) = learn_dir(dir.path(), &[]);
    assert!(
        yaml.contains(
            "sockets:\n  # 1/2 jobs; steps: Net; 1 opened\n  - raw\n  # 2/2 jobs; steps: Net; 2 opened\n  - ping\n"
        ),
        "{yaml}"
    );
    assert_eq!(
        cov["sockets"][0]["class"], "raw",
        "classes in order: {cov:#}"
    );
    let policy = compiled(&yaml);
    let net = ciwatch::policy::StepMatch::new("s", Some("Net"));
    assert!(policy
        .socket_rule(ciwatch::policy::SocketClass::Raw, &net)
        .is_some());
    assert!(policy
        .socket_rule(ciwatch::policy::SocketClass::Packet, &net)
        .is_none());

    let (per_step, _, _) = learn_dir(dir.path(), &["--per-step"]);
    assert!(
        per_step.contains("  - { class: ping, steps: [\"Net\"] }\n"),
        "{per_step}"
    );
    compiled(&per_step);

    let old = dir.path().join("old.yml");
    std::fs::write(
        &old,
        "version: 1\nmode: enforce\nallow: [a.example]\nsockets: [packet]\n",
    )
    .unwrap();
    let out = dir.path().join("new.yml");
    let (code, stdout, stderr) = learn(&[
        "--dir",
        &s(dir.path()),
        "--out",
        &s(&out),
        "--diff",
        &s(&old),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let shown = format!("{stdout}{stderr}");
    assert!(shown.contains("+ sockets: ping"), "{shown}");
    assert!(shown.contains("- sockets: packet"), "{shown}");
    assert!(
        shown.contains("would refuse 2 raw, packet or ping socket(s)"),
        "{shown}"
    );
}
