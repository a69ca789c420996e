//! `ciwatch policy check` and `ciwatch policy diff` on the fixture policies
//! and sealed traces of tests/fixtures/policy (no root needed).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const CIWATCH: &str = env!("CARGO_BIN_EXE_ciwatch");

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(rel)
}

fn ciwatch(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(CIWATCH)
        .args(args)
        .output()
        .expect("spawn ciwatch");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn path(rel: &str) -> String {
    fixture(rel).display().to_string()
}

#[test]
fn check_accepts_a_good_policy_with_a_one_line_summary() {
    let p = path("ci-policy.yml");
    let (code, out, err) = ciwatch(&["policy", "check", &p]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let digest = sha256_hex(&std::fs::read(fixture("ci-policy.yml")).unwrap());
    assert_eq!(
        out.trim(),
        format!(
            "{p}: ok: version 1, mode enforce, 9 rules (5 names, 2 wildcards, 2 addresses/CIDRs; 2 step-scoped), \
             defaults loopback+resolver, dns report unlisted, on-policy-error fail, sha256 {digest}"
        )
    );
}

#[test]
fn check_names_line_and_field_and_exits_78() {
    for (file, line, needle) in [
        (
            "bad/wildcard-middle.yml",
            5,
            "allow[1]: a wildcard is only allowed as the whole leftmost label",
        ),
        (
            "bad/host-bits.yml",
            5,
            "allow[1]: invalid CIDR \"10.0.0.1/8\": host bits are set (the network is 10.0.0.0/8)",
        ),
        ("bad/unknown-field.yml", 5, "unknown field `prot`"),
        (
            "bad/duplicate.yml",
            6,
            "allow[2]: duplicate rule `github.com:443` (already at line 4)",
        ),
        ("bad/long-host.yml", 5, "allow[1].host: host name \"c.aaaa"),
        (
            "bad/port-float.yml",
            6,
            "allow[1].port: port \"1.5e3\" is not a number from 1 to 65535",
        ),
    ] {
        let p = path(file);
        let (code, out, err) = ciwatch(&["policy", "check", &p]);
        assert_eq!(code, 78, "{file}: {err}");
        assert!(out.is_empty(), "{out}");
        let prefix = format!("ciwatch: error: {p}:{line}:");
        assert!(
            err.starts_with(&prefix),
            "{file}: {err:?} should start with {prefix:?}"
        );
        assert!(err.contains(needle), "{file}: {err:?} lacks {needle:?}");
        let (code, out, _) = ciwatch(&["policy", "check", "--json", &p]);
        assert_eq!(code, 78);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["line"], line, "{file}");
    }
}

#[test]
fn check_refuses_an_empty_allowlist_in_enforce_mode() {
    let (code, _, err) = ciwatch(&["policy", "check", &path("bad/empty-enforce.yml")]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("the allowlist is empty in enforce mode"),
        "{err}"
    );
    assert!(err.contains("no-egress: true"), "{err}");
}

#[test]
fn check_refuses_non_utf8_and_huge_files() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("latin1.yml");
    std::fs::write(&bad, b"version: 1\nmode: observe\n# caf\xe9\n").unwrap();
    let (code, _, err) = ciwatch(&["policy", "check", &bad.display().to_string()]);
    assert_eq!(code, 78);
    assert!(
        err.contains("latin1.yml:3: not valid UTF-8 at byte 30"),
        "{err}"
    );
    let huge = dir.path().join("huge.yml");
    std::fs::write(&huge, "# x\n".repeat(300_000)).unwrap();
    let (code, _, err) = ciwatch(&["policy", "check", &huge.display().to_string()]);
    assert_eq!(code, 78);
    assert!(
        err.contains("1200000 bytes, over the 1048576-byte limit"),
        "{err}"
    );
}

#[test]
fn diff_of_a_clean_run_denies_nothing_and_exits_0() {
    for run in 1..=5 {
        let t = path(&format!("runs/run-{run}"));
        let (code, out, err) = ciwatch(&[
            "policy",
            "diff",
            "--policy",
            &path("ci-policy.yml"),
            "--resolver",
            "10.1.0.2",
            &t,
        ]);
        assert_eq!(code, 0, "run-{run}: {out}{err}");
        assert!(out.contains("would deny nothing"), "{out}");
    }
}

#[test]
fn diff_lists_what_the_policy_would_have_denied() {
    let (code, out, err) = ciwatch(&[
        "policy",
        "diff",
        "--policy",
        &path("ci-policy.yml"),
        "--resolver",
        "10.1.0.2",
        &path("compromised/events.ndjson"),
    ]);
    assert_eq!(code, 1, "{err}");
    let table: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("would deny"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table,
        [
            vec![
                "45.33.32.156",
                "443",
                "tcp",
                "exfil.attacker.example",
                "Build",
                "1"
            ],
            vec!["2001:db8:bad::1", "53", "udp", "-", "Build", "1"],
        ],
        "{out}"
    );
    assert!(out.contains("would deny 2 of "), "{out}");
    assert!(
        out.contains("lookups of names no rule lists (reported, not refused)"),
        "{out}"
    );
    assert!(out.contains("telemetry.example.com"), "{out}");
    assert!(out.contains("unused.example.com:443 (line 23)"), "{out}");
    assert!(
        out.contains("uploads.example.org:443 (steps: Publish) (line 22)"),
        "no Publish step in this run: {out}"
    );

    let (code, out, _) = ciwatch(&[
        "policy",
        "diff",
        "--json",
        "--policy",
        &path("ci-policy.yml"),
        "--resolver",
        "10.1.0.2",
        &path("compromised"),
    ]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    let denied = v["denied"].as_array().unwrap();
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["addr"], "45.33.32.156");
    assert_eq!(denied[0]["port"], 443);
    assert_eq!(denied[0]["protocol"], "tcp");
    assert_eq!(
        denied[0]["hosts"],
        serde_json::json!(["exfil.attacker.example"])
    );
    assert_eq!(denied[0]["step"]["name"], "Build");
    assert_eq!(denied[0]["count"], 1);
    assert_eq!(denied[1]["addr"], "2001:db8:bad::1");
    assert_eq!(v["policy"]["digest"].as_str().unwrap().len(), 64);
    let unlisted: Vec<&str> = v["unlisted_dns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        unlisted,
        ["exfil.attacker.example", "telemetry.example.com"]
    );
}

#[test]
fn diff_enforces_step_scoping_and_the_resolver_default() {
    let dir = tempfile::tempdir().unwrap();
    // registry.npmjs.org only in Build: the Install step's fetches are denied.
    let policy = dir.path().join("p.yml");
    std::fs::write(
        &policy,
        "version: 1\nmode: enforce\ndefaults: {resolver: false}\nallow:\n  - {host: registry.npmjs.org, port: 443, steps: [Build]}\n",
    )
    .unwrap();
    let (code, out, err) = ciwatch(&[
        "policy",
        "diff",
        "--json",
        "--policy",
        &policy.display().to_string(),
        &path("runs/run-1"),
    ]);
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let npm = v["denied"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hosts"] == serde_json::json!(["registry.npmjs.org"]))
        .expect("the registry fetch in Install is denied");
    assert_eq!(npm["step"]["name"], "Install");
    // Loopback stays allowed (the stub resolver at 127.0.0.53 and postgres on 127.0.0.1).
    assert!(
        v["denied"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| !d["addr"].as_str().unwrap().starts_with("127.")),
        "{out}"
    );
}

#[test]
fn diff_with_allow_only_and_bad_inputs() {
    let (code, out, _) = ciwatch(&[
        "policy",
        "diff",
        "--allow",
        "github.com:443",
        &path("runs/run-1"),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("policy --allow"), "{out}");
    let (code, _, err) = ciwatch(&["policy", "diff", "--allow", "a.*.b", &path("runs/run-1")]);
    assert_eq!(code, 78, "{err}");
    let (code, _, err) = ciwatch(&[
        "policy",
        "diff",
        "--policy",
        &path("ci-policy.yml"),
        "/nonexistent/trace",
    ]);
    assert_eq!(code, 66, "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.ndjson.partial"), "{}\n").unwrap();
    let (code, _, err) = ciwatch(&[
        "policy",
        "diff",
        "--policy",
        &path("ci-policy.yml"),
        &dir.path().display().to_string(),
    ]);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("ciwatch finish"), "{err}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    ciwatch::policy::sha256_hex(bytes)
}

/// A sealed log of one job whose steps opened raw, packet and ping sockets.
fn socket_trace(dir: &std::path::Path) -> String {
    let start = r#"{"type":"trace_start","schema":"ciwatch.events/v1","mode":"observe","job":{"platform":"none","id":"j"}}"#;
    let socket = |seq: u32, step: &str, class: &str| {
        format!(
            r#"{{"type":"socket","seq":{seq},"step":{{"id":"{step}","name":"{step}"}},"class":"{class}","family":"ipv4","socket_type":"dgram","protocol_number":1,"source":"cgroup_sock_create"}}"#
        )
    };
    let lines = [
        start.to_string(),
        socket(1, "Ping", "ping"),
        socket(2, "Ping", "ping"),
        socket(3, "Capture", "packet"),
        r#"{"type":"trace_end","complete":true}"#.to_string(),
    ];
    let file = dir.join("events.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file.display().to_string()
}

#[test]
fn diff_refuses_the_sockets_the_policy_does_not_list() {
    let dir = tempfile::tempdir().unwrap();
    let trace = socket_trace(dir.path());
    let policy = dir.path().join("p.yml");
    let write = |sockets: &str| {
        std::fs::write(
            &policy,
            format!("version: 1\nmode: enforce\nallow: [a.example]\n{sockets}"),
        )
        .unwrap();
    };
    let p = policy.display().to_string();
    write("sockets:\n  - ping\n  - {class: raw, steps: [Nope]}\n");
    let (code, out, err) = ciwatch(&["policy", "diff", "--policy", &p, &trace]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("raw, packet and ping sockets `sockets:` does not allow (would be refused):")
            && out.contains("  packet  Capture  1\n"),
        "{out}"
    );
    assert!(!out.contains("  ping "), "ping is listed: {out}");
    assert!(
        out.contains("sockets: raw (steps: Nope) (line 6)"),
        "an entry nothing used is reported: {out}"
    );
    write("sockets: [ping, packet]\n");
    let (code, out, err) = ciwatch(&["policy", "diff", "--policy", &p, "--json", &trace]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["refused_sockets"], Value::Array(Vec::new()));
}
