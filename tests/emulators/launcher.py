"""A CI runner's step launcher (gitlab-runner, Agent.Worker, circleci-agent,
buildkite-agent, a Jenkins agent JVM), exec'd under that name by the tests.

It starts each step of a scenario as its own child, with the step's argv,
environment and (GitLab's shell executor) script on stdin, waits for it (or,
for Jenkins' self-backgrounding wrapper, for its result file), then the next.
Several jobs run at once with "jobs"; with "done_file" the launcher lives on
after them, as a runner does, until "release_file" appears.

Usage: launcher.py SCENARIO.json [extra argv the real launcher would have]
"""

import json
import os
import subprocess
import sys
import threading
import time

scenario = json.load(open(sys.argv[1]))


def run_step(step):
    env = dict(step.get("env", {}))
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    proc = subprocess.Popen(step["argv"], env=env, stdin=subprocess.PIPE if "stdin" in step else subprocess.DEVNULL)
    if "stdin" in step:
        proc.communicate(step["stdin"].encode(), timeout=60)
    else:
        proc.wait(timeout=60)
    wait_for = step.get("wait_for")
    deadline = time.time() + 60
    while wait_for and not os.path.exists(wait_for) and time.time() < deadline:
        time.sleep(0.02)


def run_job(steps):
    for step in steps:
        run_step(step)


# "steps": one job; "jobs": several at once, as a runner with concurrency does.
jobs = scenario.get("jobs", [scenario.get("steps", [])])
threads = [threading.Thread(target=run_job, args=(steps,)) for steps in jobs]
for t in threads:
    t.start()
for t in threads:
    t.join()
# A runner outlives its jobs: say they are done, then live on until released.
if "done_file" in scenario:
    open(scenario["done_file"], "w").close()
    while not os.path.exists(scenario["release_file"]):
        time.sleep(0.02)
