"""Tekton's /tekton/bin/entrypoint: runs the step's real command (after
`-entrypoint CMD --`) as a child, as the real entrypoint does (exec.Command)."""

import subprocess
import sys

args = sys.argv[1:]
cmd = args[args.index("-entrypoint") + 1:]
if "--" in cmd:
    cmd.remove("--")
sys.exit(subprocess.call(cmd))
