//! The standard in-toto Runtime Trace predicate, v0.2
//! (in-toto/attestation spec/predicates/runtime-trace.md), derived from the
//! ciwatch predicate so that generic in-toto tooling understands the trace.
//! Fields the standard has no place for go under the `ciwatch` extension.

use serde_json::{json, Value};

use super::predicate::Predicate;

pub const PREDICATE_TYPE: &str = "https://in-toto.io/attestation/runtime-trace/v0.2";

/// `monitoredProcess.type` for GitHub Actions: the platform's SLSA build type, as v0.2 recommends.
const GITHUB_BUILD_TYPE: &str =
    "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1";
/// `monitoredProcess.type` elsewhere: a CI job as ciwatch identifies it (docs/predicate.md).
const CI_JOB_TYPE: &str = "https://dpndncy.io/agent/ci-job/v1";

pub fn from_predicate(p: &Predicate) -> Value {
    let agent_version = p
        .agent
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let mut network: Vec<Value> = p
        .egress
        .iter()
        .map(|e| {
            let mut entry = json!({
                "ip": e.ip, "port": e.port, "protocol": e.protocol,
                "count": e.count, "steps": e.steps,
            });
            if let Some(first) = e.hosts.first() {
                entry["hostname"] = json!(first);
                entry["hostnames"] = json!(e.hosts);
            }
            entry
        })
        .collect();
    // Name resolutions are network activity too; v0.2 allows an entry with only a host name.
    network.extend(p.dns.iter().map(|d| {
        json!({"hostname": d.host.lossy(), "eventType": "dns", "count": d.count, "failed": d.failed, "steps": d.steps})
    }));
    let process: Vec<Value> = p
        .execs
        .iter()
        .map(|e| {
            json!({
                "eventType": "exec", "processBinary": e.binary.lossy(),
                "binaryAndFirstArgumentSha256": e.sha256, "count": e.count, "steps": e.steps,
            })
        })
        .collect();
    let file_access: Vec<Value> = p
        .files
        .iter()
        .map(|f| {
            json!({
                "uri": file_uri(&f.path.0),
                "name": f.path.lossy(),
                "annotations": {"access": f.access, "rule": f.rule, "count": f.count, "steps": f.steps},
            })
        })
        .collect();
    json!({
        "monitor": {
            "type": format!("https://github.com/ciwatch/ciwatch/v{agent_version}"),
            "tracePolicy": {
                "mode": p.policy.mode,
                "policy": {"version": p.policy.version, "digest": p.policy.digest, "source": p.policy.source},
                "hooks": p.hooks,
                "captureArgs": p.recording.capture_args,
            },
        },
        "monitoredProcess": {
            "hostID": host_id(p),
            "type": if p.ci.platform.as_deref() == Some("github") { GITHUB_BUILD_TYPE } else { CI_JOB_TYPE },
            "event": event_id(p),
        },
        "monitorLog": {"process": process, "network": network, "fileAccess": file_access},
        "metadata": {"buildStartedOn": p.started_on, "buildFinishedOn": p.finished_on},
        "ciwatch": {
            "predicateType": super::predicate::PREDICATE_TYPE,
            "eventLog": p.event_log,
            "counts": p.counts,
            "truncated": p.truncated,
            "signing": p.signing,
        },
    })
}

/// The platform's identity (a URL where one is known), else the host.
fn host_id(p: &Predicate) -> String {
    if let Some(url) = p.ci.job.get("server_url").and_then(Value::as_str) {
        return url.to_string();
    }
    match p.ci.platform.as_deref() {
        Some("github") => "https://github.com".into(),
        Some("gitlab") => "https://gitlab.com".into(),
        Some("none") | None => format!(
            "urn:ciwatch:host:{}",
            p.recording.host.as_deref().unwrap_or("unknown")
        ),
        Some(other) => format!("urn:ciwatch:platform:{other}"),
    }
}

/// The job: its URL when the job record carries one, else its id.
fn event_id(p: &Predicate) -> String {
    ["url", "id"]
        .iter()
        .find_map(|k| p.ci.job.get(*k).and_then(Value::as_str))
        .unwrap_or("unknown")
        .to_string()
}

/// `file://` URI with every byte outside the unreserved set (and '/') percent-encoded.
fn file_uri(path: &[u8]) -> String {
    let mut out = String::from("file://");
    for &b in path {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_are_percent_encoded() {
        assert_eq!(file_uri(b"/root/.ssh/id_rsa"), "file:///root/.ssh/id_rsa");
        assert_eq!(file_uri(b"/tmp/a b\xff"), "file:///tmp/a%20b%FF");
    }
}
