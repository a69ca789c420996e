// The action's inputs, read into one typed object and checked before anything runs. Every error names the
// input (as written in the workflow) and the offending value.

import type { CaptureArgs, Mode, SignMode } from './agent.ts';
import { EndpointSyntaxError, parseEndpoint } from './endpoints.ts';
import { ARCHES, type Arch } from './checksums.ts';

export class InputError extends Error {
  constructor(
    readonly input: string,
    message: string,
  ) {
    super(`Invalid input \`${input}\`: ${message}`);
    this.name = 'InputError';
  }
}

/** What can turn the job red (the `fail-on` input). */
export const FAIL_ON = ['denied', 'lost-events', 'agent-failure', 'unsupported', 'upload-failure', 'unsigned'] as const;
export type FailOn = (typeof FAIL_ON)[number];

export const DEFAULT_FAIL_ON: readonly FailOn[] = ['denied'];

export interface Inputs {
  mode: Mode;
  allowedEndpoints: string[];
  policyFile: string | null;
  sign: SignMode;
  /** a path to a PEM key file, or the PEM text itself (from a secret) */
  signingKey: string | null;
  sensitivePaths: string[];
  captureArgs: CaptureArgs;
  uploadArtifact: boolean;
  /** empty: derived from the job at upload time */
  artifactName: string;
  jobSummary: boolean;
  failOn: FailOn[];
  /** empty: the newest version pinned in checksums.ts */
  version: string;
  binaryUrl: string | null;
  /** per architecture; `*` applies to every architecture */
  binarySha256: Partial<Record<Arch | '*', string>>;
  readyTimeoutSeconds: number;
  /** take sudo away from the runner user for the rest of the job */
  disableSudo: boolean;
}

export type InputGetter = (name: string) => string;

/**
 * Splits a list input: one entry per line or separated by commas; blank entries and lines starting with
 * `#` are ignored, so a YAML block list can carry comments.
 */
export function splitList(value: string): string[] {
  return value
    .split(/\r?\n/)
    .filter((line) => !line.trim().startsWith('#'))
    .flatMap((line) => line.split(','))
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function choice<T extends string>(get: InputGetter, name: string, allowed: readonly T[], fallback: T): T {
  const raw = get(name).trim();
  if (raw === '') return fallback;
  const v = raw.toLowerCase();
  if ((allowed as readonly string[]).includes(v)) return v as T;
  throw new InputError(name, `${JSON.stringify(raw)} is not one of ${allowed.join(', ')}`);
}

function boolean(get: InputGetter, name: string, fallback: boolean): boolean {
  const raw = get(name).trim();
  if (raw === '') return fallback;
  if (/^(true|yes|on|1)$/i.test(raw)) return true;
  if (/^(false|no|off|0)$/i.test(raw)) return false;
  throw new InputError(name, `${JSON.stringify(raw)} is not a boolean (true or false)`);
}

export function parseFailOn(raw: string): FailOn[] {
  const items = splitList(raw).map((s) => s.toLowerCase());
  if (items.length === 0) return [...DEFAULT_FAIL_ON];
  if (items.length === 1 && items[0] === 'none') return [];
  if (items.includes('all')) {
    if (items.length > 1) throw new InputError('fail-on', '"all" cannot be combined with other values');
    return [...FAIL_ON];
  }
  const out: FailOn[] = [];
  for (const item of items) {
    if (item === 'none') throw new InputError('fail-on', '"none" cannot be combined with other values');
    if (!(FAIL_ON as readonly string[]).includes(item)) {
      throw new InputError('fail-on', `${JSON.stringify(item)} is not one of ${FAIL_ON.join(', ')}, all, none`);
    }
    if (!out.includes(item as FailOn)) out.push(item as FailOn);
  }
  return out;
}

const SHA256 = /^[0-9a-f]{64}$/;

/** `binary-sha256`: one hex digest, or `x86_64=HEX` / `aarch64=HEX` entries for a multi-arch URL. */
export function parseBinarySha256(raw: string): Partial<Record<Arch | '*', string>> {
  const out: Partial<Record<Arch | '*', string>> = {};
  for (const item of splitList(raw)) {
    const m = /^([a-z0-9_]+)\s*[=:]\s*(.+)$/i.exec(item);
    const arch = m ? (m[1] ?? '').toLowerCase() : '*';
    const hex = (m ? (m[2] ?? '') : item).trim().toLowerCase().replace(/^sha256:/, '');
    if (arch !== '*' && !(ARCHES as readonly string[]).includes(arch)) {
      throw new InputError('binary-sha256', `unknown architecture ${JSON.stringify(arch)} (use ${ARCHES.join(' or ')})`);
    }
    if (!SHA256.test(hex)) throw new InputError('binary-sha256', `${JSON.stringify(hex)} is not a SHA-256 hex digest (64 hex digits)`);
    out[arch as Arch | '*'] = hex;
  }
  return out;
}

export function readInputs(get: InputGetter): Inputs {
  const mode = choice(get, 'mode', ['observe', 'learn', 'enforce'] as const, 'observe');

  const allowedEndpoints: string[] = [];
  const bad: string[] = [];
  for (const entry of splitList(get('allowed-endpoints'))) {
    try {
      allowedEndpoints.push(parseEndpoint(entry).normalized);
    } catch (e) {
      if (e instanceof EndpointSyntaxError) bad.push(e.message);
      else throw e;
    }
  }
  if (bad.length > 0) throw new InputError('allowed-endpoints', bad.join('; '));

  const policyFile = get('policy-file').trim() || null;
  if (mode === 'enforce' && allowedEndpoints.length === 0 && !policyFile) {
    throw new InputError('mode', '"enforce" needs `allowed-endpoints` or `policy-file`: with neither, every connection would be denied');
  }

  const sign = choice(get, 'sign', ['keyless', 'key', 'auto', 'none'] as const, 'auto');
  const signingKey = get('signing-key').trim() || null;
  if (sign === 'key' && !signingKey) {
    throw new InputError('signing-key', '`sign: key` needs `signing-key` (a PEM private key, or the path of one)');
  }

  const sensitivePaths = splitList(get('sensitive-paths'));
  for (const p of sensitivePaths) {
    if (!p.startsWith('/') && !p.startsWith('**/')) {
      throw new InputError('sensitive-paths', `${JSON.stringify(p)} must be absolute or start with "**/"`);
    }
  }

  const captureArgs = choice(get, 'capture-args', ['full', 'redacted', 'none'] as const, 'redacted');
  const uploadArtifact = boolean(get, 'upload-artifact', true);
  const artifactName = get('artifact-name').trim();
  if (/[":<>|*?\\/\r\n]/.test(artifactName)) {
    throw new InputError('artifact-name', `${JSON.stringify(artifactName)} contains a character artifacts do not allow (" : < > | * ? \\ /)`);
  }
  const jobSummary = boolean(get, 'job-summary', true);
  const failOn = parseFailOn(get('fail-on'));
  // Enforcement fails closed: a job that asked for it never runs on without it.
  if (mode === 'enforce') {
    for (const implied of ['agent-failure', 'unsupported'] as const) if (!failOn.includes(implied)) failOn.push(implied);
  }

  const version = get('version').trim().replace(/^v/, '');
  if (version !== '' && !/^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$/.test(version)) {
    throw new InputError('version', `${JSON.stringify(version)} is not a release version such as 0.1.0`);
  }

  const binaryUrl = get('binary-url').trim() || null;
  const binarySha256 = parseBinarySha256(get('binary-sha256'));
  if (binaryUrl) {
    if (!/^(https?|file):\/\//.test(binaryUrl)) {
      throw new InputError('binary-url', `${JSON.stringify(binaryUrl)} must be an https://, http:// or file:// URL`);
    }
    if (Object.keys(binarySha256).length === 0) {
      throw new InputError(
        'binary-sha256',
        'a custom `binary-url` needs `binary-sha256`: only released versions have checksums pinned in the action',
      );
    }
  } else if (Object.keys(binarySha256).length > 0) {
    throw new InputError('binary-sha256', 'is only used with `binary-url`; released versions are checked against pinned checksums');
  }

  const timeoutRaw = get('ready-timeout').trim();
  const readyTimeoutSeconds = timeoutRaw === '' ? 60 : Number(timeoutRaw);
  if (!Number.isInteger(readyTimeoutSeconds) || readyTimeoutSeconds < 1 || readyTimeoutSeconds > 600) {
    throw new InputError('ready-timeout', `${JSON.stringify(timeoutRaw)} is not a whole number of seconds from 1 to 600`);
  }

  const disableSudo = boolean(get, 'disable-sudo', false);

  return {
    mode,
    allowedEndpoints,
    policyFile,
    sign,
    signingKey,
    sensitivePaths,
    captureArgs,
    uploadArtifact,
    artifactName,
    jobSummary,
    failOn,
    version,
    binaryUrl,
    binarySha256,
    readyTimeoutSeconds,
    disableSudo,
  };
}

/** `sign: keyless` needs the OIDC token request variables, which the runner sets only with `id-token: write`. */
export function keylessPermissionError(env: NodeJS.ProcessEnv): string | null {
  if (env['ACTIONS_ID_TOKEN_REQUEST_URL'] && env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']) return null;
  return (
    '`sign: keyless` needs a GitHub OIDC token, and this job cannot request one. Add ' +
    '`permissions: id-token: write` to the job (keep `contents: read`), or use `sign: auto` to fall back to a key.'
  );
}
