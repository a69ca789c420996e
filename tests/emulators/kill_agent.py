"""A step that kills the ciwatch agent with SIGKILL, as a step with sudo could: kill_agent.py OUT_DIR.

As root, it finds the agent's root-only state directory in the readiness line `ciwatch start` printed
(OUT_DIR.start.json), as a sudo step could find it under /run/ciwatch.

It first waits until the agent has written a denial to its live log, so that the log it leaves holds one,
and returns once every thread of the agent has exited: its descriptors are closed by then.
"""

import json
import os
import signal
import sys
import time

state = json.load(open(sys.argv[1] + ".start.json"))["state"]
pid, start = open(os.path.join(state, "agent.pid")).read().split()[:2]


def wait(failure, ready, deadline_s=30):
    until = time.monotonic() + deadline_s
    while not ready():
        if time.monotonic() > until:
            sys.exit(f"kill_agent: {failure} within {deadline_s} s")
        time.sleep(0.01)


def logged_denial():
    try:
        with open(os.path.join(state, "events.ndjson.partial"), "rb") as f:
            return b'"type":"denied"' in f.read()
    except OSError:
        return False


def exited():
    # The leader of a killed process is a zombie until reaped; its other threads are gone once they exited.
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return fields[19] != start or (fields[0] in ("Z", "X") and tasks == [pid])


wait("the agent logged no denial", logged_denial)
os.kill(int(pid), signal.SIGKILL)
wait("the agent did not exit", exited)
print("killed the agent, pid", pid)
