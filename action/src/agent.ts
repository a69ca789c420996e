// The contract between this action and the `ciwatch` binary, in one place.
//
//   ciwatch start --out DIR [--mode M] [--policy FILE] [--allow ENDPOINT]... [--capture-args P]
//                 [--sensitive-path GLOB]... [--sign S] [--signing-key PATH | --sign-key-stdin]
//                 --finish-token-sha256 HEX [--disable-sudo] [--ready-timeout SECONDS]
//     (with --sign-key-stdin the PEM key is on stdin) exit 0 once the hooks are attached, the agent left
//     running detached; stdout holds ONE JSON line:
//     {"pid": N, "out": "DIR", "state": "/run/ciwatch/KEY", "hooks": [{"hook": "...", "attached": true, ...}]}
//
//   ciwatch finish --state STATE --json          (the token whose SHA-256 start was given, on stdin)
//     seals, signs and copies the public files into start's --out; stdout holds ONE JSON line
//     (FinishResult below), also when it exits non-zero (agent died, events lost). Idempotent: a second
//     call prints the same result with "repeat": true.
//
// Everything the action reads from the agent goes through parseStartOutput/parseFinishOutput, which
// validate the JSON at run time. A change of the contract is an edit of this file.

import {
  array,
  bool,
  count,
  ContractError,
  literal,
  nullable,
  object,
  optional,
  port,
  record,
  str,
  type Validator,
} from './validate.ts';

export { ContractError };

/** Exit codes of `ciwatch start` that the action explains (docs/exit-codes.md). */
export const EXIT = {
  NO_BTF: 71,
  MISSING_PRIVILEGES: 77,
  BAD_CONFIG: 78,
  HOOK_CANNOT_ATTACH: 79,
} as const;

export type Mode = 'observe' | 'learn' | 'enforce';
export type SignMode = 'keyless' | 'key' | 'auto' | 'none';
export type CaptureArgs = 'full' | 'redacted' | 'none';

export interface StartOptions {
  outDir: string;
  mode: Mode;
  policyFile: string | null;
  allow: string[];
  captureArgs: CaptureArgs;
  sensitivePaths: string[];
  sign: SignMode;
  signingKeyPath: string | null;
  /** the PEM key goes to start on stdin */
  signKeyStdin: boolean;
  finishTokenSha256: string;
  disableSudo: boolean;
  readyTimeoutSeconds: number;
}

/** The argument list of `ciwatch start` (never a shell string). */
export function startArgs(o: StartOptions): string[] {
  const args = ['start', '--out', o.outDir, '--mode', o.mode];
  if (o.policyFile) args.push('--policy', o.policyFile);
  for (const endpoint of o.allow) args.push('--allow', endpoint);
  args.push('--capture-args', o.captureArgs);
  for (const glob of o.sensitivePaths) args.push('--sensitive-path', glob);
  args.push('--sign', o.sign);
  if (o.signingKeyPath) args.push('--signing-key', o.signingKeyPath);
  if (o.signKeyStdin) args.push('--sign-key-stdin');
  args.push('--finish-token-sha256', o.finishTokenSha256);
  if (o.disableSudo) args.push('--disable-sudo');
  args.push('--ready-timeout', String(o.readyTimeoutSeconds));
  return args;
}

/** The argument list of `ciwatch finish`: exactly what `--disable-sudo` leaves the runner user. */
export function finishArgs(stateDir: string): string[] {
  return ['finish', '--state', stateDir, '--json'];
}

const hookStatus = object({ hook: str, implementation: str, attached: bool });

const startResult = object({ pid: count, out: str, state: str, hooks: array(hookStatus) });

export type HookStatus = ReturnType<typeof hookStatus>;
export type StartResult = ReturnType<typeof startResult>;

const signing = object({
  method: literal('keyless', 'key', 'none'),
  fallback: nullable(str),
  identity: nullable(str),
  verify_command: nullable(str),
});

const step = object({
  id: str,
  name: str,
  stage: nullable(str),
  execs: count,
  connects: count,
  dns: count,
  files: count,
});

const egress = object({
  addr: str,
  port: port,
  protocol: str,
  hosts: array(str),
  steps: array(str),
});

// `unlisted`: enforce judged the name unlisted (absent from older agents).
const dnsName = object({ host: str, addrs: array(str), steps: array(str), unlisted: optional(bool) });

const fileOpen = object({ path: str, steps: array(str) });

const finishResult = object({
  events: str,
  summary: str,
  envelope: nullable(str),
  bundle: nullable(str),
  signing,
  counts: object({ exec: count, connect: count, dns: count, file: count }),
  lost: count,
  denied: count,
  agent_died: bool,
  steps: array(step),
  egress: array(egress),
  dns: array(dnsName),
  files: array(fileOpen),
  denied_events: array(record),
  refused_lookups: optional(array(record)),
  denied_sockets: optional(array(record)),
  proposed_policy: nullable(str),
  policy_diff: nullable(str),
  // an earlier finish already sealed and signed this job
  repeat: optional(bool),
});

export type Signing = ReturnType<typeof signing>;
export type StepCounts = ReturnType<typeof step>;
export type Egress = ReturnType<typeof egress>;
export type DnsName = ReturnType<typeof dnsName>;
export type FileOpen = ReturnType<typeof fileOpen>;
export type FinishResult = ReturnType<typeof finishResult>;

/**
 * The contract says ONE JSON line on stdout. A log line printed before it (a warning, a notice) must not
 * break the action, so the last line that parses as a JSON object is taken.
 */
function lastJsonObject(stdout: string, what: string): unknown {
  const lines = stdout.split(/\r?\n/).map((l) => l.trim());
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i];
    if (!line || !line.startsWith('{')) continue;
    try {
      return JSON.parse(line) as unknown;
    } catch {
      continue;
    }
  }
  throw new ContractError(`${what} printed no JSON object on stdout`);
}

function parse<T>(validator: Validator<T>, stdout: string, what: string): T {
  const value = lastJsonObject(stdout, what);
  try {
    return validator(value, '$');
  } catch (e) {
    if (e instanceof ContractError) throw new ContractError(`${what} output does not match the contract: ${e.message}`);
    throw e;
  }
}

export function parseStartOutput(stdout: string): StartResult {
  return parse(startResult, stdout, '`ciwatch start`');
}

export function parseFinishOutput(stdout: string): FinishResult {
  return parse(finishResult, stdout, '`ciwatch finish`');
}

/** What a failed `ciwatch start` means for the user, by exit code. */
export type StartFailureKind = 'unsupported' | 'config' | 'agent';

export function classifyStartFailure(code: number | null): { kind: StartFailureKind; explanation: string } {
  switch (code) {
    case EXIT.NO_BTF:
      return { kind: 'unsupported', explanation: 'the kernel exposes no BTF (/sys/kernel/btf/vmlinux), which ciwatch needs' };
    case EXIT.MISSING_PRIVILEGES:
      return {
        kind: 'agent',
        explanation: 'ciwatch lacks the privileges to load BPF programs (it needs root; on self-hosted runners give the runner user passwordless sudo)',
      };
    case EXIT.BAD_CONFIG:
      return {
        kind: 'config',
        explanation: 'ciwatch rejected its configuration (check the policy-file, allowed-endpoints, sensitive-paths, signing-key and disable-sudo inputs)',
      };
    case EXIT.HOOK_CANNOT_ATTACH:
      return { kind: 'agent', explanation: 'a required hook cannot be attached on this kernel (`ciwatch check` shows why)' };
    default:
      return { kind: 'agent', explanation: code === null ? 'ciwatch start did not exit' : `ciwatch start exited with code ${code}` };
  }
}
