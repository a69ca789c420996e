#!/usr/bin/env node
// CONTRACT STUB of the `ciwatch` binary, for the end-to-end tests that exercise the action's side of the
// contract (download, verification, start/finish argv, detaching, artifact upload, summary, outputs)
// before the real `ciwatch start`/`finish` exist. It records nothing from the kernel: every trace figure
// it prints is canned (OUT/.stub/canned.json, when a test writes it, is merged into the finish result).
// What it does implement faithfully is the contract in action/src/agent.ts:
//   start  --out DIR ...         → makes a 0700 state directory under /run/ciwatch, leaves a detached agent
//                                  process, prints ONE JSON readiness line (with `state`), exits 0
//   finish --state STATE --json  → checks the token on stdin against start's --finish-token-sha256 (exit 77
//                                  on a mismatch), stops the agent, writes the trace files into start's
//                                  --out, prints ONE JSON line; exit 1 when the agent died or events were
//                                  lost; a second call reprints the result with "repeat": true.
// Every invocation's argv is appended to OUT/.stub/calls.jsonl for the tests to check.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [cmd, ...rest] = process.argv.slice(2);
const flag = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const alive = (pid) => {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if (e.code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return true;
  }
};

if (cmd === '__agent') {
  // The detached "agent": holds the partial log open until finish asks it to stop.
  const out = rest[0];
  writeFileSync(join(out, '.stub', 'agent.pid'), String(process.pid));
  process.on('SIGTERM', () => {
    appendFileSync(join(out, 'events.ndjson.partial'), JSON.stringify({ type: 'trace_end', complete: true }) + '\n');
    process.exit(0);
  });
  setInterval(() => {}, 1 << 30);
} else {
  const readStdin = () => {
    try {
      return readFileSync(0, 'utf8');
    } catch {
      return '';
    }
  };
  const stateDir = cmd === 'finish' ? flag('--state') : join('/run/ciwatch', `stub-${randomBytes(8).toString('hex')}`);
  if (cmd === 'start') {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(join(stateDir, 'job.json'), JSON.stringify({ out: flag('--out'), token: flag('--finish-token-sha256') ?? null }));
  }
  const job = stateDir && existsSync(join(stateDir, 'job.json')) ? JSON.parse(readFileSync(join(stateDir, 'job.json'), 'utf8')) : null;
  const out = job?.out;
  if (!out) {
    console.error(`ciwatch: error: no agent was started for ${stateDir}`);
    process.exit(82);
  }
  const stdin = cmd === 'finish' || rest.includes('--sign-key-stdin') ? readStdin() : '';
  const stub = join(out, '.stub');
  mkdirSync(stub, { recursive: true });
  appendFileSync(join(stub, 'calls.jsonl'), JSON.stringify({ argv: process.argv.slice(2), uid: process.getuid?.(), env: Object.keys(process.env).sort(), stdinBytes: stdin.length }) + '\n');

  if (cmd === 'start') {
    const exit = process.env.CIWATCH_STUB_START_EXIT;
    if (exit) {
      console.error(`ciwatch: error: stub start failure ${exit}`);
      process.exit(Number(exit));
    }
    writeFileSync(join(out, 'events.ndjson.partial'), JSON.stringify({ type: 'trace_start', schema: 'ciwatch.events/v1', mode: flag('--mode') }) + '\n');
    const agent = spawn(process.execPath, [fileURLToPath(import.meta.url), '__agent', out], { detached: true, stdio: 'ignore' });
    agent.unref();
    const deadline = Date.now() + Number(flag('--ready-timeout') ?? 60) * 1000;
    while (!existsSync(join(stub, 'agent.pid'))) {
      if (Date.now() > deadline) {
        console.error('ciwatch: error: the agent did not become ready');
        process.exit(70);
      }
      await sleep(20);
    }
    console.error('ciwatch: hooks attached (stub)');
    console.log(
      JSON.stringify({
        pid: agent.pid,
        out,
        state: stateDir,
        hooks: [
          { hook: 'exec', implementation: 'tracepoint/sched/sched_process_exec', attached: true },
          { hook: 'connect', implementation: 'tracepoint/syscalls/sys_enter_connect', attached: true },
          { hook: 'file', implementation: 'kprobe/security_file_open', attached: true },
          { hook: 'dns', implementation: 'uprobe/libc:getaddrinfo', attached: true },
        ],
      }),
    );
    process.exit(0);
  } else if (cmd === 'finish') {
    if (job.token && createHash('sha256').update(stdin.trim()).digest('hex') !== job.token) {
      console.error('ciwatch: error: the token on standard input is not the one `ciwatch start` was given: refusing to finish');
      process.exit(77);
    }
    const saved = join(stub, 'result.json');
    if (existsSync(saved)) {
      const { result, code } = JSON.parse(readFileSync(saved, 'utf8'));
      console.log(JSON.stringify({ ...result, repeat: true }));
      process.exit(code);
    }
    const pid = Number(readFileSync(join(stub, 'agent.pid'), 'utf8'));
    const died = !alive(pid);
    if (!died) {
      process.kill(pid, 'SIGTERM');
      while (alive(pid)) await sleep(20);
    }
    const events = join(out, 'events.ndjson');
    renameSync(join(out, 'events.ndjson.partial'), events);
    const sign = JSON.parse(readFileSync(join(stub, 'calls.jsonl'), 'utf8').split('\n')[0]).argv;
    const signMode = sign[sign.indexOf('--sign') + 1] ?? 'auto';
    const signed = signMode !== 'none';
    if (signed) {
      writeFileSync(join(out, 'attestation.intoto.jsonl'), JSON.stringify({ payloadType: 'application/vnd.in-toto+json', payload: '', signatures: [] }) + '\n');
      writeFileSync(join(out, 'attestation.sigstore.json'), JSON.stringify({ mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json' }) + '\n');
    }
    writeFileSync(join(out, 'summary.md'), '| step | execs | connects | DNS | sensitive opens |\n|---|---|---|---|---|\n');
    let result = {
      events,
      summary: join(out, 'summary.md'),
      envelope: signed ? join(out, 'attestation.intoto.jsonl') : null,
      bundle: signed ? join(out, 'attestation.sigstore.json') : null,
      signing: signed
        ? {
            method: 'keyless',
            fallback: null,
            identity: 'https://github.com/octo/demo/.github/workflows/ci.yml@refs/heads/main',
            verify_command: `ciwatch verify --bundle attestation.sigstore.json --certificate-identity https://github.com/octo/demo/.github/workflows/ci.yml@refs/heads/main --certificate-oidc-issuer https://token.actions.githubusercontent.com events.ndjson`,
          }
        : { method: 'none', fallback: null, identity: '', verify_command: '' },
      counts: { exec: 3, connect: 1, dns: 1, file: 1 },
      lost: 0,
      denied: 0,
      agent_died: died,
      steps: [
        { id: 'step-fetch', name: 'Fetch from loopback', stage: 'Main', execs: 2, connects: 1, dns: 0, files: 0 },
        { id: 'step-secret', name: 'Read a secret', stage: 'Main', execs: 1, connects: 0, dns: 1, files: 1 },
      ],
      egress: [{ addr: '127.0.0.2', port: 8080, protocol: 'tcp', hosts: [], steps: ['step-fetch'] }],
      dns: [{ host: 'localhost', addrs: ['127.0.0.1'], steps: ['step-secret'] }],
      files: [{ path: '/root/.ssh/id_ed25519', steps: ['step-secret'] }],
      denied_events: [],
      proposed_policy: null,
      policy_diff: null,
    };
    const canned = join(stub, 'canned.json');
    if (existsSync(canned)) result = { ...result, ...JSON.parse(readFileSync(canned, 'utf8')) };
    const code = result.agent_died || result.lost > 0 ? 1 : 0;
    writeFileSync(saved, JSON.stringify({ result, code }));
    console.log(JSON.stringify(result));
    process.exit(code);
  } else {
    console.error(`ciwatch: error: unknown command ${cmd}`);
    process.exit(2);
  }
}
