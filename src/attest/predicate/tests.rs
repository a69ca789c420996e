use super::*;

fn facts() -> LogFacts {
    LogFacts {
        name: "events.ndjson".into(),
        sha256: "00".repeat(32),
        bytes: 1,
        lines: 1,
    }
}

fn summarise(lines: &[&str]) -> Result<Predicate, SummaryError> {
    let mut s = Summariser::new();
    for (i, l) in lines.iter().enumerate() {
        s.line(l.as_bytes(), i == 0)?;
    }
    Ok(s.finish(facts())?.predicate)
}

const START: &str = r#"{"type":"trace_start","schema":"ciwatch.events/v1","time":"2026-11-02T10:00:00.000000000Z","agent":{"name":"ciwatch","version":"0.1.0"},"host":"runner-1","kernel":"6.8.0","mode":"observe","job":{"platform":"github","id":"acme/app/1/1/build"},"command":["make"],"hooks":[{"hook":"exec","implementation":"tracepoint/sched/sched_process_exec","skipped":[],"attached":true}],"capture_args":"redacted","sensitive_paths":[],"ignore_paths":[]}"#;
const END: &str = r#"{"type":"trace_end","time":"2026-11-02T10:01:00.000000000Z","events":{"exec":2},"lost":{"exec":0,"dns":3},"lost_total":3,"undecodable":0,"file_filtered":0,"exit_code":0,"still_running":0,"unwritten":2,"agent_status":"died","complete":false}"#;

fn ev(body: &str, step: &str) -> String {
    format!(
        r#"{{"seq":1,"time":"t","ktime_ns":1,"job":{{"platform":"github","id":"acme/app/1/1/build"}},"step":{step},"proc":{{"pid":1,"tgid":1,"start_ns":1,"comm":"sh","uid":0,"cgroup_id":1}},{body}}}"#
    )
}

#[test]
fn exec_digest_covers_binary_and_first_argument_only() {
    let expected = hex::encode(Sha256::digest(b"/usr/bin/npm\0install"));
    assert_eq!(
        hex::encode(exec_digest(b"/usr/bin/npm", Some(b"install"))),
        expected
    );
    // No first argument: the binary alone, no separator.
    assert_eq!(
        hex::encode(exec_digest(b"/bin/true", None)),
        hex::encode(Sha256::digest(b"/bin/true"))
    );
    assert_ne!(
        exec_digest(b"/bin/true", None),
        exec_digest(b"/bin/true", Some(b""))
    );
}

#[test]
fn summarises_events_by_kind_destination_and_step() {
    let build = r#"{"id":"2","name":"Build","stage":"main","runner_extra":{"x":1}}"#;
    let test = r#"{"id":"3","name":"Test"}"#;
    let lines = [
        START.to_string(),
        ev(
            r#""type":"exec","filename":"/usr/bin/npm","argv":["npm","install","--token=[REDACTED]"],"argv_truncated":false,"argv_policy":"redacted","ppid":1,"parent_start_ns":1"#,
            build,
        ),
        ev(
            r#""type":"exec","filename":"/usr/bin/npm","argv":["npm","install"],"argv_truncated":false,"argv_policy":"redacted","ppid":1,"parent_start_ns":1"#,
            test,
        ),
        ev(
            r#""type":"exec","filename":{"base64":"L3RtcC9m/28="},"argv":["x"],"argv_truncated":false,"argv_policy":"redacted","ppid":1,"parent_start_ns":1"#,
            test,
        ),
        ev(
            r#""type":"connect","family":"ipv4","protocol":"tcp","addr":"140.82.112.3","port":443,"source":"syscall","hosts":["github.com"]"#,
            build,
        ),
        ev(
            r#""type":"connect","family":"ipv4","protocol":"tcp","addr":"140.82.112.3","port":443,"source":"syscall""#,
            test,
        ),
        ev(
            r#""type":"dns","host":"github.com","addrs":["140.82.112.3"],"ret":0,"latency_us":5,"host_truncated":false"#,
            build,
        ),
        ev(
            r#""type":"dns","host":"nope.invalid","addrs":[],"ret":-2,"error":"EAI_NONAME","latency_us":5,"host_truncated":false"#,
            build,
        ),
        ev(
            r#""type":"file","path":"/root/.ssh/id_rsa","access":"read","open_flags":0,"hook":"kprobe/security_file_open","rule":"**/.ssh/id_*","path_truncated":false"#,
            test,
        ),
        ev(r#""type":"fork","child_tgid":2,"child_start_ns":2"#, test),
        ev(r#""type":"future_kind","whatever":[1,2,3]"#, test),
        END.to_string(),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let p = summarise(&refs).unwrap();
    assert_eq!(p.counts.events.get("exec"), Some(&3));
    assert_eq!(p.counts.events.get("future_kind"), Some(&1));
    assert_eq!(p.counts.lost.get("dns"), Some(&3));
    assert_eq!(p.counts.lost_total, 3);
    assert!(!p.event_log.complete);
    assert_eq!(p.event_log.agent_status.as_deref(), Some("died"));
    assert_eq!(p.counts.unwritten, 2);
    assert_eq!(p.policy.mode.as_deref(), Some("observe"));
    assert_eq!(p.policy.version, None);
    assert_eq!(p.ci.platform.as_deref(), Some("github"));
    assert_eq!(p.ci.steps.len(), 2);
    // Unknown step fields are kept verbatim.
    assert_eq!(p.ci.steps[0]["runner_extra"]["x"], 1);
    assert_eq!(p.ci.steps[0]["eventCount"], 4);
    assert_eq!(p.egress.len(), 1);
    assert_eq!(p.egress[0].count, 2);
    assert_eq!(p.egress[0].hosts, vec!["github.com"]);
    assert_eq!(p.egress[0].steps, vec!["2", "3"]);
    // npm install counted twice (redacted third argument does not matter), the raw-bytes path once.
    assert_eq!(p.execs.len(), 2);
    let npm = p
        .execs
        .iter()
        .find(|e| e.binary == Text::from("/usr/bin/npm"))
        .unwrap();
    assert_eq!(npm.count, 2);
    assert_eq!(
        npm.sha256,
        hex::encode(Sha256::digest(b"/usr/bin/npm\0install"))
    );
    let raw = p
        .execs
        .iter()
        .find(|e| e.binary.0 == b"/tmp/f\xffo")
        .unwrap();
    assert_eq!(raw.sha256, hex::encode(Sha256::digest(b"/tmp/f\xffo")));
    assert_eq!(p.dns.len(), 2);
    assert_eq!(
        p.dns
            .iter()
            .find(|d| d.host == Text::from("nope.invalid"))
            .unwrap()
            .failed,
        1
    );
    assert_eq!(p.files[0].rule, "**/.ssh/id_*");
    assert_eq!(p.files[0].access, vec!["read"]);
}

#[test]
fn rejects_logs_that_are_not_sealed_ciwatch_logs() {
    assert!(matches!(
        summarise(&[END]),
        Err(SummaryError::NoTraceStart { .. })
    ));
    assert!(matches!(
        summarise(&["not json"]),
        Err(SummaryError::NoTraceStart { .. })
    ));
    assert!(matches!(summarise(&[START]), Err(SummaryError::NoTraceEnd)));
}

#[test]
fn socket_events_as_the_writer_writes_them_are_counted_not_unparsed() {
    use crate::event::{Body, Event, JobRef, Proc, SocketBody, StepRef};
    let body = SocketBody {
        class: "packet",
        family: "packet",
        socket_type: "raw",
        protocol_number: 3,
        source: "syscall",
        refusal: Some("killed"),
        untracked: false,
    };
    let event = |body| Event {
        seq: 1,
        time: "t".into(),
        ktime_ns: 1,
        job: JobRef {
            platform: "github".into(),
            id: "acme/app/1/1/build".into(),
        },
        step: StepRef {
            id: "2".into(),
            stage: None,
            name: None,
        },
        proc: Proc {
            pid: 1,
            tgid: 1,
            start_ns: 1,
            comm: crate::text::Text::new(b"ping".to_vec()),
            uid: 0,
            cgroup_id: 1,
        },
        body,
    };
    let lines = [
        START.to_string(),
        serde_json::to_string(&event(Body::Socket(body.clone()))).unwrap(),
        serde_json::to_string(&event(Body::SocketDenied(body))).unwrap(),
        END.to_string(),
    ];
    let p = summarise(&lines.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_eq!(
        p.event_log.unparsed_lines, 0,
        "a field name clashes with another kind's"
    );
    assert_eq!(p.counts.events.get("socket"), Some(&1));
    assert_eq!(p.counts.events.get("socket_denied"), Some(&1));
}

#[test]
fn counts_unparsed_lines_without_failing() {
    let p = summarise(&[START, "{garbage", END]).unwrap();
    assert_eq!(p.event_log.unparsed_lines, 1);
}

#[test]
fn merged_parts_equal_one_pass() {
    let steps = [r#"{"id":"a","name":"A"}"#, r#"{"id":"b"}"#, r#"{"id":"c"}"#];
    let mut lines = vec![START.to_string()];
    for i in 0..60u32 {
        let step = steps[(i as usize / 7) % 3];
        let body = match i % 4 {
            0 => format!(
                r#""type":"dns","host":"h{}.example","ret":{}"#,
                i % 5,
                i % 2
            ),
            1 => format!(
                r#""type":"connect","protocol":"{}","addr":"10.0.0.{}","port":443,"hosts":["n{}"]"#,
                ["tcp", "sctp"][i as usize % 2],
                i % 3,
                i % 4
            ),
            2 => format!(
                r#""type":"exec","filename":"/bin/x{}","argv":["x","{}"]"#,
                i % 3,
                i % 2
            ),
            _ => format!(
                r#""type":"file","path":"/p{}","access":"{}","rule":"r""#,
                i % 2,
                ["read", "write"][i as usize % 2]
            ),
        };
        lines.push(ev(&body, step).replace(r#""seq":1"#, &format!(r#""seq":{}"#, i + 1)));
    }
    lines.push(END.to_string());
    let whole = {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        serde_json::to_value(summarise(&refs).unwrap()).unwrap()
    };
    // Parts handed out out of order, as parallel workers would see them.
    let mut parts: Vec<Summariser> = (0..3).map(|_| Summariser::new()).collect();
    for (i, l) in lines.iter().enumerate() {
        parts[(i * 7) % 3].line(l.as_bytes(), i == 0).unwrap();
    }
    let mut merged = parts.pop().unwrap();
    while let Some(p) = parts.pop() {
        merged.merge(p);
    }
    let merged = serde_json::to_value(merged.finish(facts()).unwrap().predicate).unwrap();
    assert_eq!(merged, whole);
    assert_eq!(whole["ci"]["steps"][0]["id"], "a");
    assert_eq!(
        whole["egress"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["protocol"] == "sctp")
            .count(),
        3
    );
}

#[test]
fn caps_distinct_entries() {
    let mut s = Summariser::new();
    s.line(START.as_bytes(), true).unwrap();
    for i in 0..(MAX_ENTRIES + 5) {
        let l = ev(
            &format!(
                r#""type":"dns","host":"h{i}.example","addrs":[],"ret":0,"latency_us":1,"host_truncated":false"#
            ),
            r#"{"id":"1"}"#,
        );
        s.line(l.as_bytes(), false).unwrap();
    }
    s.line(END.as_bytes(), false).unwrap();
    let p = s.finish(facts()).unwrap().predicate;
    assert_eq!(p.dns.len(), MAX_ENTRIES);
    assert_eq!(p.truncated.dns, 5);
}
