#!/bin/sh
# ACTIONS_RUNNER_HOOK_JOB_STARTED for a self-hosted GitHub runner watched by
# ciwatch.service. ciwatch detects the job by itself (Runner.Worker starting);
# this hook only writes the job's identity to the journal, so that an
# operator can match a trace in /var/lib/ciwatch/traces to a workflow run.
# It runs as the job's "Set up runner" step and must never fail the job.
logger -t ciwatch-hook "job started: repo=${GITHUB_REPOSITORY:-?} run=${GITHUB_RUN_ID:-?} attempt=${GITHUB_RUN_ATTEMPT:-?} job=${GITHUB_JOB:-?} runner=${RUNNER_NAME:-?} pid=$PPID" 2>/dev/null || true
exit 0
