// Test doubles shared by the unit tests.

import type { FinishResult } from '../src/agent.ts';
import type { Io } from '../src/io.ts';
import type { ProcessResult, ProcessRunner, RunOptions } from '../src/proc.ts';

export class FakeIo implements Io {
  inputs: Record<string, string> = {};
  state: Record<string, string> = {};
  saved: Record<string, string> = {};
  outputs: Record<string, string> = {};
  secrets: string[] = [];
  logs: { level: string; message: string }[] = [];
  failed: string[] = [];
  summaries: string[] = [];

  constructor(inputs: Record<string, string> = {}, state: Record<string, string> = {}) {
    this.inputs = inputs;
    this.state = state;
  }
  getInput(name: string): string {
    return this.inputs[name] ?? '';
  }
  getState(name: string): string {
    return this.state[name] ?? '';
  }
  saveState(name: string, value: string): void {
    this.saved[name] = value;
  }
  setOutput(name: string, value: string | number | boolean): void {
    this.outputs[name] = String(value);
  }
  setSecret(value: string): void {
    this.secrets.push(value);
  }
  debug(message: string): void {
    this.logs.push({ level: 'debug', message });
  }
  info(message: string): void {
    this.logs.push({ level: 'info', message });
  }
  notice(message: string): void {
    this.logs.push({ level: 'notice', message });
  }
  warning(message: string): void {
    this.logs.push({ level: 'warning', message });
  }
  error(message: string): void {
    this.logs.push({ level: 'error', message });
  }
  setFailed(message: string): void {
    this.failed.push(message);
  }
  async writeSummary(markdown: string): Promise<void> {
    this.summaries.push(markdown);
  }
  messages(level: string): string[] {
    return this.logs.filter((l) => l.level === level).map((l) => l.message);
  }
}

export interface Call {
  file: string;
  args: string[];
  options: RunOptions;
}

/** A ProcessRunner that records calls and answers from a script. */
export function fakeRunner(answer: (call: Call) => Partial<ProcessResult>): { run: ProcessRunner; calls: Call[] } {
  const calls: Call[] = [];
  const run: ProcessRunner = async (file, args, options) => {
    const call = { file, args, options };
    calls.push(call);
    return { code: 0, signal: null, stdout: '', stderr: '', timedOut: false, spawnError: null, ...answer(call) };
  };
  return { run, calls };
}

export function finishResult(outDir: string, over: Partial<FinishResult> = {}): FinishResult {
  return {
    events: `${outDir}/events.ndjson`,
    summary: `${outDir}/summary.md`,
    envelope: `${outDir}/attestation.intoto.jsonl`,
    bundle: `${outDir}/attestation.sigstore.json`,
    signing: {
      method: 'keyless',
      fallback: null,
      identity: 'https://github.com/o/r/.github/workflows/ci.yml@refs/heads/main',
      verify_command: `ciwatch verify --bundle ${outDir}/attestation.sigstore.json --certificate-identity https://github.com/o/r/.github/workflows/ci.yml@refs/heads/main --certificate-oidc-issuer https://token.actions.githubusercontent.com ${outDir}/events.ndjson`,
    },
    counts: { exec: 12, connect: 3, dns: 2, file: 1 },
    lost: 0,
    denied: 0,
    agent_died: false,
    steps: [
      { id: 's1', name: 'Run actions/checkout@v4', stage: 'Main', execs: 5, connects: 1, dns: 1, files: 0 },
      { id: 's2', name: 'Run npm ci', stage: 'Main', execs: 7, connects: 2, dns: 1, files: 1 },
    ],
    egress: [{ addr: '140.82.112.3', port: 443, protocol: 'tcp', hosts: ['github.com'], steps: ['s1'] }],
    dns: [{ host: 'registry.npmjs.org', addrs: ['104.16.0.1'], steps: ['s2'], unlisted: false }],
    files: [{ path: '/home/runner/.npmrc', steps: ['s2'] }],
    denied_events: [],
    refused_lookups: [],
    denied_sockets: [],
    proposed_policy: null,
    policy_diff: null,
    repeat: false,
    ...over,
  };
}
