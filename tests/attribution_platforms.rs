//! Step attribution on emulated jobs of the other eight platforms, each with
//! its real launcher name, process layout and environment (see
//! ../shared/reference/ci-attribution.md): GitLab (shell executor), Jenkins,
//! CircleCI, Azure Pipelines and Buildkite run `ciwatch start`/`finish` inside
//! the job; Bitbucket, Tekton and Drone steps are containers seen by
//! `ciwatch daemon`. Every event must land in the step that caused it.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{emulator, python_as, require_root, step_of, write, Ports, Shim, CIWATCH};
use serde_json::{json, Value};

fn tcp(port: u16) -> String {
    format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-")
}

fn start(out: &Path) -> String {
    format!(
        "{CIWATCH} start --out {} > {}.start.json",
        out.display(),
        out.display()
    )
}

fn finish(out: &Path) -> String {
    format!(
        "{CIWATCH} finish --out {} --json > {}.finish.json",
        out.display(),
        out.display()
    )
}

fn env(pairs: &[(&str, &str)]) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(
        "PATH".into(),
        std::env::var("PATH").unwrap_or_default().into(),
    );
    map.insert("HOME".into(), "/root".into());
    for (k, v) in pairs {
        map.insert(k.to_string(), Value::from(*v));
    }
    Value::Object(map)
}

/// Runs the launcher emulator exec'd as `bin/<name>` with these steps.
fn run_launcher(tmp: &Path, name: &str, steps: Vec<Value>, extra: &[&str]) {
    let bin = tmp.join("bin").join(name);
    python_as(&bin);
    let scenario = tmp.join(format!("{name}.json"));
    write(&scenario, &json!({ "steps": steps }).to_string());
    let status = common::spawn(
        Command::new(&bin)
            .arg(emulator("launcher.py"))
            .arg(&scenario)
            .args(extra),
    )
    .wait()
    .unwrap();
    assert!(status.success(), "the emulated {name} job failed");
}

fn read_trace(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("events.ndjson")).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        panic!(
            "no sealed trace in {} ({e}); agent.log:\n{log}",
            dir.display()
        )
    });
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The (step id, name, stage) every connect to `port` carries; all must agree.
fn step_for_port(lines: &[Value], port: u16) -> (String, Option<String>, Option<String>) {
    let hits: Vec<&Value> = lines
        .iter()
        .filter(|e| e["type"] == "connect" && e["port"] == port)
        .collect();
    assert!(!hits.is_empty(), "no connect to port {port} was recorded");
    let (id, name, stage) = step_of(hits[0]);
    for h in &hits {
        assert_eq!(
            step_of(h),
            (id, name, stage),
            "connects to {port} are split across steps"
        );
    }
    (
        id.to_string(),
        name.map(String::from),
        stage.map(String::from),
    )
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn gitlab_shell_executor_stages() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let ports = Ports::new(&["script", "after"]);
    // The shell executor starts `bash -l` per build stage with gitlab-runner's own
    // environment; the job's variables arrive in the script, on stdin.
    let exports = "export GITLAB_CI=true CI_SERVER=yes CI_SERVER_URL=https://gitlab.example CI_JOB_ID=1337 CI_JOB_NAME=build CI_JOB_STAGE=test\n";
    let stage = |script: String| json!({ "argv": ["/bin/bash", "-l"], "env": env(&[]), "stdin": format!("{exports}{script}\n") });
    run_launcher(
        tmp.path(),
        "gitlab-runner",
        vec![
            stage("true".into()),
            stage(format!("{}\n{}", start(&out), tcp(ports.port("script")))),
            stage(format!("{}\n{}", tcp(ports.port("after")), finish(&out))),
        ],
        &["run"],
    );
    let lines = read_trace(&out);
    assert_eq!(lines[0]["job"]["platform"], "gitlab-ci");
    assert_eq!(lines[0]["job"]["id"], "https://gitlab.example/-/jobs/1337");
    let script = step_for_port(&lines, ports.port("script"));
    let after = step_for_port(&lines, ports.port("after"));
    assert_eq!(
        script.0, "start",
        "the rest of the script that ran ciwatch start"
    );
    assert_eq!(
        after.0, "step-1",
        "the next stage, numbered: the shell executor hides stage names"
    );
    let steps = lines[0]["steps"].as_array().unwrap();
    let numbered = steps.iter().find(|s| s["id"] == "step-1").unwrap();
    assert!(
        numbered["degraded"][0].as_str().unwrap().contains("stdin"),
        "the missing name is explained: {numbered}"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn jenkins_durable_sh_steps() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();

    let out = tmp.path().join("trace");
    let ws = tmp.path().join("ws/app@tmp");
    let ports = Ports::new(&["build", "test", "deploy"]);
    // durable-task's wrapper backgrounds itself, so the sh step is reparented away from the agent JVM.
    let sh_step = |id: &str, stage_name: &str, script: String| {
        let ctl = ws.join(format!("durable-{id}"));
        write(&ctl.join("script.sh"), &format!("{script}\n"));
        let c = ctl.display();
        let wrapper = format!(
            "(cp '{c}/script.sh' '{c}/script.sh.copy'; 'sh' -xe '{c}/script.sh.copy' > '{c}/jenkins-log.txt' 2>&1; echo $? > '{c}/jenkins-result.txt.tmp'; mv '{c}/jenkins-result.txt.tmp' '{c}/jenkins-result.txt') >&- 2>&- &"
        );
        json!({
            "argv": ["sh", "-c", wrapper],
            "env": env(&[("JENKINS_URL", "https://ci.example/"), ("BUILD_TAG", "jenkins-app-42"), ("JOB_NAME", "app"), ("BUILD_NUMBER", "42"), ("STAGE_NAME", stage_name)]),
            "wait_for": ctl.join("jenkins-result.txt"),
        })
    };
    // `sh` steps run dash, which has no /dev/tcp: the connects go through bash.
    let connect = |p: &str| format!("/usr/bin/bash -c '{}'", tcp(ports.port(p)));
    run_launcher(
        tmp.path(),
        "java",
        vec![
            sh_step(
                "0a1b2c3d",
                "Build",
                format!("{}\n{}", start(&out), connect("build")),
            ),
            sh_step("11111111", "Test", connect("test")),
            sh_step(
                "22222222",
                "Deploy",
                format!("{}\n{}", connect("deploy"), finish(&out)),
            ),
        ],
        &["-jar", "agent.jar"],
    );
    let lines = read_trace(&out);
    assert_eq!(lines[0]["job"]["platform"], "jenkins");
    assert_eq!(lines[0]["job"]["id"], "jenkins-app-42");
    for (port, id, stage) in [
        ("build", "durable-0a1b2c3d", "Build"),
        ("test", "durable-11111111", "Test"),
        ("deploy", "durable-22222222", "Deploy"),
    ] {
        let (got_id, _, got_stage) = step_for_port(&lines, ports.port(port));
        assert_eq!(
            (got_id.as_str(), got_stage.as_deref()),
            (id, Some(stage)),
            "port {port}"
        );
    }
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn circleci_steps_are_numbered() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let ports = Ports::new(&["one", "two", "three"]);
    let job_env = env(&[
        ("CIRCLECI", "true"),
        ("CI", "true"),
        (
            "CIRCLE_WORKFLOW_JOB_ID",
            "5e2a9f0c-1111-2222-3333-444455556666",
        ),
        ("CIRCLE_NODE_INDEX", "0"),
        ("CIRCLE_JOB", "build"),
        ("CIRCLE_BUILD_NUM", "7"),
    ]);
    let step = |cmd: String| json!({ "argv": ["/bin/bash", "-eo", "pipefail", "-c", cmd], "env": job_env });
    run_launcher(
        tmp.path(),
        "circleci-agent",
        vec![
            step(format!("{}\n{}", start(&out), tcp(ports.port("one")))),
            step(tcp(ports.port("two"))),
            step(format!("{}\n{}", tcp(ports.port("three")), finish(&out))),
        ],
        &[],
    );
    let lines = read_trace(&out);
    assert_eq!(
        lines[0]["job"]["id"],
        "5e2a9f0c-1111-2222-3333-444455556666/0"
    );
    assert_eq!(step_for_port(&lines, ports.port("one")).0, "start");
    assert_eq!(step_for_port(&lines, ports.port("two")).0, "step-1");
    assert_eq!(step_for_port(&lines, ports.port("three")).0, "step-2");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn azure_pipelines_tasks() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let ports = Ports::new(&["install", "build"]);
    // Tasks are node handlers whose scripts run as grandchildren of Agent.Worker.
    let task = |id: &str, name: &str, cmd: String| {
        let script = tmp.path().join(format!("_temp/{id}.sh"));
        write(&script, &format!("{cmd}\n"));
        json!({
            "argv": ["/bin/bash", "-c", format!("/bin/bash {}", script.display())],
            "env": env(&[("TF_BUILD", "True"), ("SYSTEM_JOBID", "7c1f-job"), ("SYSTEM_JOBDISPLAYNAME", "Build job"), ("VSTS_PROCESS_LOOKUP_ID", "vsts_1"), ("SYSTEM_TASKINSTANCEID", id), ("SYSTEM_TASKDISPLAYNAME", name)]),
        })
    };
    run_launcher(
        tmp.path(),
        "Agent.Worker",
        vec![
            task(
                "a0000000-0000-0000-0000-000000000001",
                "Start ciwatch",
                start(&out),
            ),
            task(
                "a0000000-0000-0000-0000-000000000002",
                "Install deps",
                tcp(ports.port("install")),
            ),
            task(
                "a0000000-0000-0000-0000-000000000003",
                "Build",
                tcp(ports.port("build")),
            ),
            task(
                "a0000000-0000-0000-0000-000000000004",
                "Finish ciwatch",
                finish(&out),
            ),
        ],
        &["spawnclient", "3", "4"],
    );
    let lines = read_trace(&out);
    assert_eq!(lines[0]["job"]["platform"], "azure-pipelines");
    assert_eq!(
        step_for_port(&lines, ports.port("install")).1.as_deref(),
        Some("Install deps")
    );
    assert_eq!(
        step_for_port(&lines, ports.port("build")).1.as_deref(),
        Some("Build")
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn buildkite_hook_phases() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let ports = Ports::new(&["command", "post"]);
    let hooks = tmp.path().join("hooks");
    write(&hooks.join("environment"), "true\n");
    write(
        &hooks.join("post-command"),
        &format!("{}\n", tcp(ports.port("post"))),
    );
    write(&hooks.join("pre-exit"), &format!("{}\n", finish(&out)));
    let job_env = env(&[
        ("BUILDKITE", "true"),
        ("CI", "true"),
        ("BUILDKITE_JOB_ID", "018f-job"),
        ("BUILDKITE_LABEL", "Build"),
        ("BUILDKITE_BUILD_NUMBER", "12"),
    ]);
    let bootstrap = json!({ "steps": [
        { "argv": ["/bin/bash", hooks.join("environment")], "env": job_env },
        { "argv": ["/bin/bash", "-e", "-c", format!("{}\n{}", start(&out), tcp(ports.port("command")))], "env": job_env },
        { "argv": ["/bin/bash", hooks.join("post-command")], "env": job_env },
        { "argv": ["/bin/bash", hooks.join("pre-exit")], "env": job_env },
    ]});
    let bootstrap_file = tmp.path().join("bootstrap.json");
    write(&bootstrap_file, &bootstrap.to_string());
    // `buildkite-agent start` runs `buildkite-agent bootstrap` per job; bootstrap runs the phases.
    let agent = tmp.path().join("bin/buildkite-agent");
    python_as(&agent);
    let start_step = json!({ "argv": [agent, emulator("launcher.py"), bootstrap_file, "bootstrap"], "env": job_env });
    run_launcher(tmp.path(), "buildkite-agent", vec![start_step], &["start"]);
    let lines = read_trace(&out);
    assert_eq!(lines[0]["job"]["id"], "018f-job");
    assert_eq!(step_for_port(&lines, ports.port("command")).0, "command");
    assert_eq!(step_for_port(&lines, ports.port("post")).0, "post-command");
}

struct Daemon {
    child: Child,
    state: PathBuf,
}

impl Daemon {
    fn start(tmp: &Path) -> Daemon {
        let state = tmp.join("state");
        let config = tmp.join("daemon.toml");
        write(&config, "[health]\nlisten = \"127.0.0.1:0\"\n");
        let mut child = Command::new(CIWATCH)
            .args(["daemon", "--idle-secs", "1", "--state-dir"])
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if line.contains("daemon ready") {
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return Daemon { child, state };
            }
            line.clear();
        }
        let status = child.wait();
        panic!("the daemon exited before it was ready: {status:?}");
    }

    /// The one trace sealed for a job whose id contains `job`.
    fn trace(&self, job: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = std::fs::read_dir(&self.state).ok().and_then(|d| {
                d.flatten().map(|e| e.path()).find(|p| {
                    p.join("events.ndjson").exists()
                        && p.file_name().unwrap().to_string_lossy().contains(job)
                })
            });
            if let Some(dir) = found {
                return read_trace(&dir);
            }
            assert!(
                Instant::now() < deadline,
                "no sealed trace for job {job} in {}",
                self.state.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs `command` as a container process with `env`, through the fake container runtime.
fn in_container(shim: &Shim, env: Value, command: Vec<String>) -> Child {
    let code = "import json, sys\nsys.path.insert(0, sys.argv[1])\nfrom emu import request_container\n\
                sys.exit(request_container(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])))";
    Command::new("/usr/bin/python3")
        .args(["-c", code])
        .arg(emulator(""))
        .arg(&shim.fifo)
        .arg(env.to_string())
        .arg(json!(command).to_string())
        .spawn()
        .unwrap()
}

fn bash(cmd: String) -> Vec<String> {
    vec!["/usr/bin/bash".into(), "-c".into(), cmd]
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn bitbucket_container_step_is_the_job() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let shim = Shim::start(tmp.path());
    let daemon = Daemon::start(tmp.path());
    let ports = Ports::new(&["a", "b"]);
    let uuid = "{9f8e7d6c-0000-1111-2222-333344445555}";
    let build_env = env(&[
        ("BITBUCKET_STEP_UUID", uuid),
        ("BITBUCKET_PIPELINE_UUID", "{p}"),
        ("BITBUCKET_BUILD_NUMBER", "5"),
        ("BITBUCKET_REPO_FULL_NAME", "acme/app"),
        ("CI", "true"),
    ]);
    let mut c = in_container(
        &shim,
        build_env,
        bash(format!(
            "{}; sleep 0.1; {}",
            tcp(ports.port("a")),
            tcp(ports.port("b"))
        )),
    );
    assert!(c.wait().unwrap().success());
    let lines = daemon.trace("9f8e7d6c");
    assert_eq!(lines[0]["job"]["platform"], "bitbucket-pipelines");
    assert_eq!(lines[0]["job"]["job_is_step"], true);
    assert_eq!(step_for_port(&lines, ports.port("a")).0, "job");
    assert_eq!(step_for_port(&lines, ports.port("b")).0, "job");
    let note = lines[0]["steps"][0]["degraded"][0].as_str().unwrap();
    assert!(note.contains("the job is the step"), "{note}");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn tekton_step_containers() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let shim = Shim::start(tmp.path());
    let daemon = Daemon::start(tmp.path());
    let ports = Ports::new(&["clone", "build"]);
    let entrypoint = tmp.path().join("tekton/bin/entrypoint");
    python_as(&entrypoint);
    let step = |i: u32, port: u16| {
        let mut argv: Vec<String> = vec![
            entrypoint.display().to_string(),
            emulator("entrypoint.py").display().to_string(),
        ];
        for a in [
            "-wait_file",
            &format!("/tekton/run/{}/out", i - 1),
            "-post_file",
            &format!("/tekton/run/{i}/out"),
            "-termination_path",
            "/tekton/termination",
            "-entrypoint",
            "/usr/bin/bash",
            "--",
            "-c",
            &tcp(port),
        ] {
            argv.push(a.to_string());
        }
        argv
    };
    let pod_env = env(&[("HOSTNAME", "build-run-x7k2-pod")]);
    for (i, port) in [(1, ports.port("clone")), (2, ports.port("build"))] {
        assert!(in_container(&shim, pod_env.clone(), step(i, port))
            .wait()
            .unwrap()
            .success());
    }
    let lines = daemon.trace("build-run-x7k2");
    assert_eq!(lines[0]["job"]["platform"], "tekton");
    assert_eq!(step_for_port(&lines, ports.port("clone")).0, "step-1");
    assert_eq!(step_for_port(&lines, ports.port("build")).0, "step-2");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn drone_parallel_step_containers() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let shim = Shim::start(tmp.path());
    let daemon = Daemon::start(tmp.path());
    let ports = Ports::new(&["build", "test"]);
    let step_env = |name: &str, number: &str| {
        env(&[
            ("DRONE", "true"),
            ("CI", "true"),
            ("DRONE_REPO", "acme/app"),
            ("DRONE_BUILD_NUMBER", "9"),
            ("DRONE_STAGE_NUMBER", "1"),
            ("DRONE_STAGE_NAME", "default"),
            ("DRONE_STEP_NAME", name),
            ("DRONE_STEP_NUMBER", number),
        ])
    };
    // Steps run in parallel, one container each.
    let loop_on = |port: u16| {
        bash(
            (0..4)
                .map(|_| format!("{}; sleep 0.05", tcp(port)))
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    let mut a = in_container(&shim, step_env("build", "2"), loop_on(ports.port("build")));
    let mut b = in_container(&shim, step_env("test", "3"), loop_on(ports.port("test")));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let lines = daemon.trace("acme_app_9_1");
    let build = step_for_port(&lines, ports.port("build"));
    let test = step_for_port(&lines, ports.port("test"));
    assert_eq!((build.0.as_str(), build.1.as_deref()), ("2", Some("build")));
    assert_eq!((test.0.as_str(), test.1.as_deref()), ("3", Some("test")));
}

/// A launcher that outlives its jobs, exec'd as `bin/<name>`: runs `jobs` at once, then lives on
/// until released. Returns the child and the file it writes once its jobs are done.
struct Runner {
    child: Child,
    done: PathBuf,
    release: PathBuf,
}

impl Runner {
    fn start(tmp: &Path, name: &str, jobs: Vec<Vec<Value>>, extra: &[&str]) -> Runner {
        let bin = tmp.join("bin").join(name);
        python_as(&bin);
        let (done, release) = (tmp.join(format!("{name}.done")), tmp.join(format!("{name}.release")));
        let scenario = tmp.join(format!("{name}.json"));
        write(
            &scenario,
            &json!({ "jobs": jobs, "done_file": done, "release_file": release }).to_string(),
        );
        let child = common::spawn(
            Command::new(&bin)
                .arg(emulator("launcher.py"))
                .arg(&scenario)
                .args(extra),
        );
        Runner { child, done, release }
    }

    /// Waits until the jobs are done; the runner itself goes on.
    fn jobs_done(&mut self) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.done.exists() {
            assert!(self.child.try_wait().unwrap().is_none(), "the runner exited early");
            assert!(Instant::now() < deadline, "the jobs did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        Instant::now()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.release, "");
        let _ = self.child.wait();
    }
}

/// A sealed trace's end: complete, and sealed while its launcher still ran.
fn assert_sealed_complete(lines: &[Value], runner: &mut Runner, done: Instant) {
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "trace_end");
    assert_eq!(end["agent_status"], "ok", "{end}");
    assert_eq!(end["complete"], true, "{end}");
    assert!(runner.still_running(), "sealed before the runner exited");
    assert!(
        done.elapsed() < Duration::from_secs(15),
        "sealed {:?} after the job ended",
        done.elapsed()
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_gitlab_runner_that_outlives_its_jobs_gets_each_sealed_while_the_daemon_runs() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path());
    let ports = Ports::new(&["a", "b"]);
    // Two jobs at once on one shell-executor runner; each build stage is a `bash -s` with the
    // job's variables, fed its script on stdin.
    let job = |id: &str, port: u16| -> Vec<Value> {
        let vars = env(&[
            ("GITLAB_CI", "true"),
            ("CI_SERVER", "yes"),
            ("CI_SERVER_URL", "https://gitlab.example"),
            ("CI_JOB_ID", id),
            ("CI_JOB_NAME", "build"),
        ]);
        ["true".to_string(), format!("{}; sleep 0.2", tcp(port)), "true".into()]
            .into_iter()
            .map(|script| json!({ "argv": ["/bin/bash", "-s"], "env": vars, "stdin": format!("{script}\n") }))
            .collect()
    };
    let mut runner = Runner::start(
        tmp.path(),
        "gitlab-runner",
        vec![job("101", ports.port("a")), job("102", ports.port("b"))],
        &["run"],
    );
    let done = runner.jobs_done();
    for (id, port) in [("jobs_101", ports.port("a")), ("jobs_102", ports.port("b"))] {
        let lines = daemon.trace(id);
        assert_sealed_complete(&lines, &mut runner, done);
        let connects: Vec<&Value> = lines.iter().filter(|e| e["type"] == "connect").collect();
        assert!(
            !connects.is_empty() && connects.iter().all(|c| c["port"] == port),
            "{id}: only its own connects: {connects:#?}"
        );
        assert_eq!(step_for_port(&lines, port).0, "step-2", "the second stage");
    }
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn jenkins_builds_on_an_agent_started_before_the_daemon_are_recorded_and_sealed() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<Ports> = (0..2).map(|_| Ports::new(&["build", "test"])).collect();
    // Build n runs in workspace app-n (an executor each), as BUILD_TAG jenkins-app-4n.
    let sh_step = |n: usize, id: &str, stage_name: &str, port: u16| {
        let ctl = tmp.path().join(format!("ws/app-{n}@tmp/durable-{id}"));
        write(
            &ctl.join("script.sh"),
            &format!("/usr/bin/bash -c '{}'\n", tcp(port)),
        );
        let c = ctl.display();
        let wrapper = format!(
            "(cp '{c}/script.sh' '{c}/script.sh.copy'; 'sh' -xe '{c}/script.sh.copy' > '{c}/jenkins-log.txt' 2>&1; echo $? > '{c}/jenkins-result.txt.tmp'; mv '{c}/jenkins-result.txt.tmp' '{c}/jenkins-result.txt') >&- 2>&- &"
        );
        json!({
            "argv": ["nohup", "sh", "-c", wrapper],
            "env": env(&[("JENKINS_URL", "https://ci.example/"), ("BUILD_TAG", &format!("jenkins-app-4{n}")), ("JOB_NAME", "app"), ("BUILD_NUMBER", &format!("4{n}")), ("STAGE_NAME", stage_name)]),
            "wait_for": ctl.join("jenkins-result.txt"),
        })
    };
    // The agent JVM runs before the daemon starts, as on a node that was up first. The build
    // waits for the daemon: a release file the test writes once it is ready.
    let gate = tmp.path().join("daemon-ready");
    let wait_gate = json!({ "argv": ["sh", "-c", format!("while [ ! -e '{}' ]; do sleep 0.02; done", gate.display())], "env": env(&[]) });
    let builds = (0..2)
        .map(|n| {
            vec![
                wait_gate.clone(),
                sh_step(n, "0a1b2c3d", "Build", ports[n].port("build")),
                sh_step(n, "11111111", "Test", ports[n].port("test")),
            ]
        })
        .collect();
    let mut runner = Runner::start(tmp.path(), "java", builds, &["-jar", "agent.jar"]);
    let daemon = Daemon::start(tmp.path());
    write(&gate, "");
    let done = runner.jobs_done();
    for (n, own) in ports.iter().enumerate() {
        let lines = daemon.trace(&format!("jenkins-app-4{n}"));
        assert_sealed_complete(&lines, &mut runner, done);
        assert_eq!(lines[0]["job"]["platform"], "jenkins");
        let connects = lines.iter().filter(|e| e["type"] == "connect").count();
        assert_eq!(connects, 2, "build {n} holds its own two connects only");
        for (port, id, stage) in [("build", "durable-0a1b2c3d", "Build"), ("test", "durable-11111111", "Test")] {
            let (got_id, _, got_stage) = step_for_port(&lines, own.port(port));
            assert_eq!((got_id.as_str(), got_stage.as_deref()), (id, Some(stage)), "build {n} {port}");
        }
    }
}

/// Under the daemon, a runner that lives on starts one launcher per job (`launcher`, exec'd as
/// such), two jobs at once; each job's launcher runs one step per port, with `job_env(n)` and
/// `argv(script)`. Each job must get its own sealed, complete trace while the runner still runs;
/// `trace_key(n)` finds job n's trace directory.
fn two_jobs_of_one_launcher_each(
    launcher: &str,
    launcher_argv: &[&str],
    job_env: impl Fn(usize) -> Value,
    argv: impl Fn(String) -> Value,
    trace_key: impl Fn(usize) -> String,
) {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path());
    let bin = tmp.path().join("bin").join(launcher);
    python_as(&bin);
    let ports: Vec<Ports> = (0..2).map(|_| Ports::new(&["first", "second"])).collect();
    let jobs: Vec<Vec<Value>> = (0..2)
        .map(|n| {
            let steps: Vec<Value> = ["first", "second"]
                .iter()
                .map(|p| json!({ "argv": argv(tcp(ports[n].port(p))), "env": job_env(n) }))
                .collect();
            let file = tmp.path().join(format!("job-{n}.json"));
            write(&file, &json!({ "steps": steps }).to_string());
            let mut cmd = vec![json!(bin), json!(emulator("launcher.py")), json!(file)];
            cmd.extend(launcher_argv.iter().map(|a| json!(a)));
            vec![json!({ "argv": cmd, "env": job_env(n) })]
        })
        .collect();
    let mut runner = Runner::start(tmp.path(), "runner-service", jobs, &[]);
    let done = runner.jobs_done();
    for (n, own) in ports.iter().enumerate() {
        let lines = daemon.trace(&trace_key(n));
        assert_sealed_complete(&lines, &mut runner, done);
        let connects: Vec<&Value> = lines.iter().filter(|e| e["type"] == "connect").collect();
        let mine = [own.port("first"), own.port("second")];
        assert_eq!(connects.len(), 2, "job {n}: {connects:#?}");
        assert!(
            connects.iter().all(|c| mine.iter().any(|p| c["port"] == *p)),
            "job {n} holds only its own connects: {connects:#?}"
        );
    }
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn circleci_jobs_under_the_daemon_are_sealed_as_their_agents_exit() {
    two_jobs_of_one_launcher_each(
        "circleci-agent",
        &[],
        |n| {
            env(&[
                ("CIRCLECI", "true"),
                ("CI", "true"),
                ("CIRCLE_WORKFLOW_JOB_ID", &format!("5e2a9f0c-1111-2222-3333-00000000000{n}")),
                ("CIRCLE_NODE_INDEX", "0"),
                ("CIRCLE_JOB", "build"),
            ])
        },
        |cmd| json!(["/bin/bash", "-eo", "pipefail", "-c", cmd]),
        |n| format!("00000000000{n}_0"),
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn azure_jobs_under_the_daemon_are_sealed_as_their_workers_exit() {
    two_jobs_of_one_launcher_each(
        "Agent.Worker",
        &["spawnclient", "3", "4"],
        |n| {
            env(&[
                ("TF_BUILD", "True"),
                ("SYSTEM_JOBID", &format!("7c1f-job-{n}")),
                ("VSTS_PROCESS_LOOKUP_ID", &format!("vsts_{n}")),
                ("SYSTEM_TASKINSTANCEID", &format!("a0000000-0000-0000-0000-00000000000{n}")),
                ("SYSTEM_TASKDISPLAYNAME", "Build"),
            ])
        },
        |cmd| json!(["/bin/bash", "-c", cmd]),
        |n| format!("7c1f-job-{n}"),
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn buildkite_jobs_under_the_daemon_are_sealed_as_their_bootstraps_exit() {
    two_jobs_of_one_launcher_each(
        "buildkite-agent",
        &["bootstrap"],
        |n| {
            env(&[
                ("BUILDKITE", "true"),
                ("CI", "true"),
                ("BUILDKITE_JOB_ID", &format!("018f-job-{n}")),
                ("BUILDKITE_LABEL", "Build"),
            ])
        },
        |cmd| json!(["/bin/bash", "-e", "-c", cmd]),
        |n| format!("018f-job-{n}"),
    );
}
