"""A fake container runtime, exec'd as containerd-shim-runc-v2 by the test
(outside any runner's process tree). For each request on its FIFO it forks a
child, moves it into a fresh cgroup (as runc does) and execs the command with
the requested environment; it reports each exit status on the request's reply
FIFO. Requests run concurrently, as containers do."""

import json
import os
import sys
import threading

fifo, cgroup_root = sys.argv[1], sys.argv[2]
os.mkfifo(fifo)


def reap(pid, reply):
    _, status = os.waitpid(pid, 0)
    with open(reply, "w") as r:
        r.write(str(os.waitstatus_to_exitcode(status)))


n = 0
while True:
    with open(fifo) as f:
        for line in f:
            req = json.loads(line)
            n += 1
            cg = os.path.join(cgroup_root, f"ctr{n}")
            os.makedirs(cg, exist_ok=True)
            pid = os.fork()
            if pid == 0:
                with open(os.path.join(cg, "cgroup.procs"), "w") as p:
                    p.write(str(os.getpid()))
                os.execve(req["command"][0], req["command"], req["env"])
            threading.Thread(target=reap, args=(pid, req["reply"]), daemon=True).start()
