// Running the agent: argument lists only (never a shell string), a hard timeout, and sudo only when the
// runner user is not already root.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** set when the program could not be started at all (ENOENT, EACCES) */
  spawnError: string | null;
}

export interface RunOptions {
  env: NodeJS.ProcessEnv;
  timeoutMs: number;
  /** how long to wait for stdout/stderr to drain after the process exited */
  drainMs?: number;
  /** written to the program's stdin, which is then closed (without it, stdin is empty) */
  input?: string;
}

export type ProcessRunner = (file: string, args: string[], options: RunOptions) => Promise<ProcessResult>;

const MAX_CAPTURE = 4 * 1024 * 1024;

/**
 * Runs a program to completion. It resolves when the program *exits*, not when its pipes close: `ciwatch
 * start` leaves a detached agent behind, and if that agent kept an inherited stdout open, waiting for the
 * pipe to close would hang the step.
 */
export const runProcess: ProcessRunner = (file, args, options) =>
  new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    const child = spawn(file, args, { env: options.env, stdio: ['pipe', 'pipe', 'pipe'], shell: false });
    // A program that exits without reading its stdin must not crash this step with EPIPE.
    child.stdin.on('error', () => {});
    child.stdin.end(options.input ?? '');
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += d;
    });
    child.stderr.on('data', (d: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += d;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    }, options.timeoutMs);
    let exit: Omit<ProcessResult, 'stdout' | 'stderr' | 'timedOut'> | null = null;
    let closed = 0;
    const finish = (r: Omit<ProcessResult, 'stdout' | 'stderr' | 'timedOut'>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...r, stdout, stderr, timedOut });
    };
    const onClose = (): void => {
      closed++;
      if (closed === 2 && exit) finish(exit);
    };
    child.stdout.once('close', onClose);
    child.stderr.once('close', onClose);
    child.on('error', (e) => finish({ code: null, signal: null, spawnError: e.message }));
    child.on('exit', (code, signal) => {
      exit = { code, signal, spawnError: null };
      if (closed === 2) return finish(exit);
      const result = exit;
      setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        finish(result);
      }, options.drainMs ?? 2000);
    });
  });

/** `file args` as root: directly when already root, else through non-interactive sudo keeping `envNames`. */
export function privileged(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  isRoot: boolean,
): { file: string; args: string[] } {
  if (isRoot) return { file, args };
  const names = Object.keys(env)
    .filter((k) => env[k] !== undefined && k !== 'PATH' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .sort();
  const preserve = names.length > 0 ? [`--preserve-env=${names.join(',')}`] : [];
  return { file: 'sudo', args: ['-n', ...preserve, '--', file, ...args] };
}

const PASS_EXACT = new Set([
  'PATH',
  'HOME',
  'LANG',
  'TZ',
  'TMPDIR',
  'CI',
  'USER',
  'LOGNAME',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'HTTPS_PROXY',
  'HTTP_PROXY',
  'NO_PROXY',
  'https_proxy',
  'http_proxy',
  'no_proxy',
]);
const PASS_PREFIX = /^(GITHUB_|RUNNER_|CIWATCH_|SIGSTORE_|LC_)/;
const NEVER = new Set(['GITHUB_TOKEN']);

/**
 * The environment `ciwatch start` gets, in pre, before any other step could write to $GITHUB_ENV: what the
 * agent needs to identify the job (GITHUB_*, RUNNER_*), its own settings (CIWATCH_*, SIGSTORE_*), locale and
 * proxy settings, and the OIDC request variables when signing may be keyless. start fixes the signing
 * choices, endpoints, OIDC source and proxy in its root-only state; `finish` reads none of them from its
 * environment (FINISH_ENV). Never the artifact/cache runtime token, inputs or state.
 */
export function agentEnv(env: NodeJS.ProcessEnv, options: { idToken: boolean }): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || NEVER.has(k)) continue;
    if (PASS_EXACT.has(k) || PASS_PREFIX.test(k)) out[k] = v;
  }
  if (options.idToken) {
    for (const k of ['ACTIONS_ID_TOKEN_REQUEST_URL', 'ACTIONS_ID_TOKEN_REQUEST_TOKEN']) {
      const v = env[k];
      if (v) out[k] = v;
    }
  }
  return out;
}

/**
 * All the environment `ciwatch finish` gets: nothing a step could have put into $GITHUB_ENV picks a key, a
 * trust root, a Sigstore endpoint or a proxy, as nothing of it is passed on.
 */
export const FINISH_ENV: Readonly<NodeJS.ProcessEnv> = Object.freeze({ PATH: '/usr/sbin:/usr/bin:/sbin:/bin' });

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Whether a process exists (EPERM counts: a root-owned agent seen from the runner user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // A killed agent that nobody reaped yet is a zombie: signal 0 still succeeds, but it is dead.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}
