"""A CI runner's step launcher (gitlab-runner, Agent.Worker, circleci-agent,
buildkite-agent, a Jenkins agent JVM), exec'd under that name by the tests.

It starts each step of a scenario as its own child, with the step's argv,
environment and (GitLab's shell executor) script on stdin, waits for it (or,
for Jenkins' self-backgrounding wrapper, for its result file), then the next.

Usage: launcher.py SCENARIO.json [extra argv the real launcher would have]
"""

import json
import os
import subprocess
import sys
import time

scenario = json.load(open(sys.argv[1]))
for step in scenario["steps"]:
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
