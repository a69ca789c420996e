"""Runner.Worker, as actions/runner runs a job (see ../../docs and the
reference: Handlers/ScriptHandler.cs, NodeScriptActionHandler.cs,
FileCommandManager.cs, ProcessInvoker.cs, StepsRunner.cs).

Usage (exec'd as <root>/bin/Runner.Worker): github_worker.py CONFIG.json
"""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import await_reader, base_env, guid, log_line, request_container, spawn, tcp, write_script  # noqa: E402

cfg = json.load(open(sys.argv[1]))
root = cfg["runner_root"]
work = cfg["work"]
temp = os.path.join(work, "_temp")
cmds = os.path.join(temp, "_runner_file_commands")
os.makedirs(cmds, exist_ok=True)
if cfg.get("no_diag"):
    log = open(os.devnull, "w")  # a runner whose _diag is missing or unreadable
else:
    os.makedirs(os.path.join(root, "_diag"), exist_ok=True)
    log = open(os.path.join(root, "_diag", time.strftime("Worker_%Y%m%d-%H%M%S-utc.log", time.gmtime())), "w")
    if cfg.get("await_reader"):
        # A real Worker lives for the whole job; this one may live for milliseconds. ciwatch reads only
        # the log the Worker holds open, so wait until a reader (the daemon) holds it open too.
        await_reader(log.name)
ports = cfg["ports"]
tracking = "github_" + guid()
node = os.path.join(root, "externals", "node20", "bin", "node")
action_js = os.path.join(work, "_actions", "acme", "tool", "v1", "dist", "index.js")

job = {
    "GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_REPOSITORY": "acme/app", "GITHUB_RUN_ID": "4242",
    "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "build", "GITHUB_WORKFLOW": "ci",
    "GITHUB_SERVER_URL": "https://github.com", "RUNNER_TEMP": temp, "RUNNER_TRACKING_ID": tracking,
    "ACTIONS_RUNTIME_TOKEN": "secret-runtime-token-must-not-leak",
}
log_line(log, "Worker", "Job message:")
log.write(' {\n  "jobId": "b1c2d3",\n  "jobDisplayName": "build (emulated)"\n}\n')
log.flush()


def step_env(action, step_guid, extra=None):
    env = base_env(job)
    env["GITHUB_ACTION"] = action
    for name, prefix in [("GITHUB_OUTPUT", "set_output_"), ("GITHUB_ENV", "set_env_"), ("GITHUB_STATE", "save_state_"),
                         ("GITHUB_STEP_SUMMARY", "step_summary_"), ("GITHUB_PATH", "add_path_")]:
        path = os.path.join(cmds, prefix + step_guid)
        open(path, "w").close()
        env[name] = path
    env.update(extra or {})
    return env


def start(display, argv, env):
    log_line(log, "StepsRunner", f"Processing step: DisplayName='{display}'")
    log_line(log, "ProcessInvokerWrapper", "Starting process:")
    proc = spawn(argv, env, cwd=work)
    log_line(log, "ProcessInvokerWrapper", f"Process started with process id {proc.pid}, waiting for process exit.")
    return proc


def finish(display, proc, action, stage, step_guid):
    code = proc.wait(timeout=60)
    log_line(log, "ProcessInvokerWrapper", f"Finished process {proc.pid} with exit code {code}, and elapsed time 00:00:00.1.")
    telemetry = {"action": display, "type": "run", "stage": stage, "stepId": step_guid, "stepContextName": action,
                 "result": "succeeded" if code == 0 else "failed", "startTime": "2026-11-26T00:00:00Z",
                 "finishTime": "2026-11-26T00:00:01Z"}
    log_line(log, "ExecutionContext", "Publish step telemetry for current step " + json.dumps(telemetry, indent=2) + ".")
    return code


def run_step(display, body, action="__run", shell="default", stage="Main", extra=None):
    """A run: step: script file <temp>/<guid>.sh, run by bash as ScriptHandler does."""
    g = guid()
    script = write_script(os.path.join(temp, g + ".sh"), body)
    argv = ["/usr/bin/bash", "-e", script] if shell == "default" else ["/usr/bin/bash", "--noprofile", "--norc", "-e", "-o", "pipefail", script]
    proc = start(display, argv, step_env(action, g, extra))
    return display, proc, action, stage, g


def node_step(display, stage, port, extra=None):
    g = guid()
    env = step_env("__acme_tool", g, {"INPUT_PORT": str(port), **(extra or {})})
    proc = start(display, [node, action_js], env)
    return display, proc, "__acme_tool", stage, g


def done(step):
    return finish(*step)


results = {"tracking": tracking}
if cfg.get("scenario") == "orphan":
    # The Worker dies mid-step: the step goes on and connects after the Worker is gone.
    g = guid()
    script = write_script(os.path.join(temp, g + ".sh"), f"sleep {cfg.get('orphan_sleep', 0.5)}; {tcp(ports['build'])}")
    start("Orphan", ["/usr/bin/bash", "-e", script], step_env("__run", g))
    os._exit(0)
if cfg.get("scenario") == "bench":
    # scripts/bench: a 20-step job under `ciwatch start`/`finish`, each step exec- and connect-heavy.
    done(run_step("Pre Run ciwatch@v1", f"{cfg['ciwatch']} start --out {cfg['out']} > {cfg['out']}.start.json", action="__ciwatch"))
    for n in range(20):
        done(run_step(f"Step {n}", f"for i in $(seq 100); do /bin/true; {tcp(ports['bench'])}; done"))
    done(run_step("Post Run ciwatch@v1", f"{cfg['ciwatch']} finish --out {cfg['out']} --json > {cfg['out']}.finish.json", action="__ciwatch"))
    sys.exit(0)
if cfg.get("scenario") == "scoped":
    # Enforce with a policy that allows a destination only in the Build step.
    done(run_step("Pre Run ciwatch@v1", f"{cfg['ciwatch']} start --out {cfg['out']} --mode enforce --policy {cfg['policy']} --runner-diag {root}/_diag > {cfg['out']}.start.json", action="__ciwatch"))
    # The agent is stopped while the steps run: only the kernel, which scopes a step at its exec,
    # can let Build through. Each Build connects first thing, then asks the resolver for a name
    # the policy lists for Build only (`dns_probe` appends the outcome to `dns_results`).
    agent = json.load(open(cfg["out"] + ".start.json"))["pid"]  # start's readiness line
    probe = f"python3 {cfg['dns_probe']} $GITHUB_ACTION >> {cfg['dns_results']}\n" if cfg.get("dns_probe") else ""
    os.kill(agent, signal.SIGSTOP)
    try:
        for n in range(10):
            done(run_step("Build", f"{tcp(ports['build'])}\n{probe}", action="build"))
        # A failed `exec 3<>/dev/tcp/…` ends the script, so Test asks first. An earlier step wrote
        # other platforms' step variables to $GITHUB_ENV: they must not put Test into Build's groups.
        claims = {"DRONE_STEP_NAME": "build", "SYSTEM_TASKINSTANCENAME": "build", "SYSTEM_TASKDISPLAYNAME": "build"}
        done(run_step("Test", f"{probe}{tcp(ports['test'])} || true", action="test", extra=claims))
    finally:
        os.kill(agent, signal.SIGCONT)
    done(run_step("Post Run ciwatch@v1", f"{cfg['ciwatch']} finish --out {cfg['out']} --json > {cfg['out']}.finish.json", action="__ciwatch"))
    sys.exit(0)
if cfg.get("scenario") == "kill_agent":
    # Enforce, and a step kills the agent (as one with sudo could): the later steps must stay under the same
    # verdicts until the post step's `ciwatch finish` has recorded the end and detached the hooks.
    out, probe, outcomes = cfg["out"], cfg["connect_probe"], cfg["outcomes"]

    def probes(label):
        return (f"python3 {probe} {label}-unlisted {ports['unlisted']} >> {outcomes}\n"
                f"python3 {probe} {label}-allowed {ports['allowed']} >> {outcomes}")

    done(run_step("Pre Run ciwatch@v1", f"{cfg['ciwatch']} start --out {out} --mode enforce --policy {cfg['policy']} --sign key --signing-key {cfg['signing_key']} --runner-diag {root}/_diag > {out}.start.json", action="__ciwatch"))
    done(run_step("Before", probes("before"), action="before"))
    # The harness notes the BPF programs the agent holds and the links that use them, to check after
    # `finish` that nothing of them is left.
    agent = json.load(open(out + ".start.json"))["pid"]
    progs = set()
    for fd in os.listdir(f"/proc/{agent}/fdinfo"):
        try:
            progs.update(int(l.split()[1]) for l in open(f"/proc/{agent}/fdinfo/{fd}") if l.startswith("prog_id:"))
        except OSError:
            pass
    links = json.loads(subprocess.run(["bpftool", "-j", "-f", "link", "show"], capture_output=True, check=True).stdout)
    results["agent_progs"] = sorted(progs)
    results["agent_links"] = [l for l in links if l.get("prog_id") in progs]
    results["kill_code"] = done(run_step("Kill the agent", f"python3 {cfg['kill_agent']} {out}", action="kill"))
    done(run_step("After", probes("after"), action="after"))
    results["finish_code"] = done(run_step("Post Run ciwatch@v1", f"{cfg['ciwatch']} finish --out {out} --json > {out}.finish.json", action="__ciwatch"))
    json.dump(results, open(cfg["results"], "w"))
    sys.exit(0)
if cfg.get("scenario") == "short":
    # One job among several on a host watched by `ciwatch daemon`.
    if cfg.get("first_step"):
        done(run_step("First", cfg["first_step"]))
    done(run_step("Build", tcp(ports["build"])))
    done(run_step("Test", "\n".join(f"{tcp(ports['test'])}; sleep 0.05" for _ in range(3))))
    json.dump(results, open(cfg["results"], "w"))
    sys.exit(0)

# The ciwatch action's own pre step starts the agent.
done(run_step("Pre Run ciwatch@v1", f"{cfg['ciwatch']} start --out {cfg['out']} --runner-diag {root}/_diag > {cfg['out']}.start.json", action="__ciwatch"))

done(node_step("Pre Run acme/tool@v1", "Pre", ports["pre"]))
done(node_step("Run acme/tool@v1", "Main", ports["main"]))
done(run_step("Build", f"{tcp(ports['build'])}\ncat \"$CIWATCH_DECOY\" >/dev/null\ngetent ahosts localhost >/dev/null",
              shell="bash", extra={"CIWATCH_DECOY": cfg["decoy"]}))

# Two background steps run at the same time.
a = run_step("Serve A", "\n".join(f"{tcp(ports['bg_a'])}; sleep 0.05" for _ in range(4)))
b = run_step("Serve B", "\n".join(f"{tcp(ports['bg_b'])}; sleep 0.05" for _ in range(4)))
done(a)
done(b)

# A daemon that outlives its step and connects during a later one.
done(run_step("Start daemon", f"( setsid /usr/bin/bash -c 'sleep 0.6; {tcp(ports['daemon'])}' & ) ; exit 0"))
done(run_step("Scrubbed env", f"env -i /usr/bin/bash -c '{tcp(ports['env_i'])}'"))

# A step shorter than 5 ms: a custom shell (`shell: /bin/true {{0}}`) that exits at once.
g = guid()
quick = start("Quick", ["/bin/true", os.path.join(temp, g)], step_env("__run_2", g))
done(("Quick", quick, "__run_2", "Main", g))

# A container step: the Worker runs the docker CLI; the step's shell runs under the container runtime.
g = guid()
docker_env = step_env("__container", g)
# Like `docker exec -e KEY …`: values travel in the CLI's environment, never on argv; paths are mapped to /__w.
client = write_script(os.path.join(temp, "docker-client.py"),
    "import os, sys\nsys.path.insert(0, %r)\nfrom emu import request_container\n"
    "env = {k: v.replace(%r, '/__w/_temp') for k, v in os.environ.items()}\n"
    "sys.exit(request_container(%r, env, ['/usr/bin/bash', '-c', %r]))"
    % (os.path.dirname(os.path.abspath(__file__)), temp, cfg["shim_fifo"], tcp(ports["container"])))
docker = os.path.join(root, "bin", "docker")
container = start("Run in container", [docker, client], docker_env)
done(("Run in container", container, "__container", "Main", g))

# hashFiles(): a runner-internal node child without file commands.
internal = spawn([node, os.path.join(root, "bin", "hashFiles")], base_env(job))
internal.wait()

done(node_step("Post Run acme/tool@v1", "Post", ports["post"], {"STATE_seen": "1"}))
time.sleep(0.3)
done(run_step("Post Run ciwatch@v1", f"{cfg['ciwatch']} finish --out {cfg['out']} --json > {cfg['out']}.finish.json", action="__ciwatch"))
json.dump(results, open(cfg["results"], "w"))
