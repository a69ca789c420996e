"""Shared pieces of the CI runner emulators used by the attribution tests.

Each emulator is exec'd under its platform's launcher name (a copy of the
Python interpreter named Runner.Worker, gitlab-runner, ...), so the kernel sees
the same task names, parentage and environments as with the real runners.
"""

import json
import os
import subprocess
import sys
import time
import uuid


def log_line(fh, source, message, level="INFO"):
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    fh.write(f"[{stamp} {level} {source}] {message}\n")
    fh.flush()


def tcp(port):
    """A bash snippet that opens (and closes) a TCP connection to 127.0.0.1:port."""
    return f"exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-"


def guid():
    return str(uuid.uuid4())


def await_reader(path, deadline_s=30):
    """Returns once another process holds `path` open; exits loudly if none does in time."""
    target = os.path.realpath(path)
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return
                except OSError:
                    pass
        time.sleep(0.01)
    sys.exit(f"no process opened {path} within {deadline_s} s: is ciwatch daemon following this Worker?")


def spawn(argv, env, cwd=None):
    return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def write_script(path, body):
    with open(path, "w") as f:
        f.write(body + "\n")
    return path


def base_env(extra=None):
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    # As a workflow's `env:` would: ciwatch's own settings reach the steps that run it.
    env.update({k: v for k, v in os.environ.items() if k.startswith("CIWATCH_")})
    env.update(extra or {})
    return env


def request_container(fifo, env, command, done_timeout=20):
    """Asks the fake container runtime (shim.py) to run `command` in a new cgroup with `env`."""
    reply = f"{fifo}.{os.getpid()}.{time.time_ns()}"
    os.mkfifo(reply)
    with open(fifo, "w") as f:
        f.write(json.dumps({"env": env, "command": command, "reply": reply}) + "\n")
    with open(reply) as r:
        status = r.read().strip()
    os.unlink(reply)
    return int(status or "1")
