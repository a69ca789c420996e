#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_COMPLETED: the counterpart of github-job-started.sh.
logger -t ciwatch-hook "job completed: repo=${GITHUB_REPOSITORY:-?} run=${GITHUB_RUN_ID:-?} attempt=${GITHUB_RUN_ATTEMPT:-?} job=${GITHUB_JOB:-?} runner=${RUNNER_NAME:-?}" 2>/dev/null || true
exit 0
