// pre: check the inputs and the runner, install the pinned binary, start the agent, save what post needs.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { classifyStartFailure, ContractError, parseStartOutput, startArgs } from './agent.ts';
import { BinarySourceError, ChecksumMismatchError, DownloadError, resolveBinarySource, type BinarySource } from './binary.ts';
import { InstallError } from './install.ts';
import { InputError, keylessPermissionError, readInputs, type FailOn, type Inputs } from './inputs.ts';
import { errorMessage, type Io } from './io.ts';
import { checkSupport, type PlatformProbe } from './platform.ts';
import { agentEnv, privileged, processAlive, type ProcessRunner } from './proc.ts';
import { encodeState, STATE_KEY, type SavedState } from './state.ts';
import { renderNotStarted } from './summary.ts';

export interface PreDeps {
  io: Io;
  env: NodeJS.ProcessEnv;
  probe: PlatformProbe;
  isRoot: boolean;
  run: ProcessRunner;
  /** downloads and verifies the binary into `workDir`, installs the root-owned copy, returns its path */
  install: (source: BinarySource, workDir: string) => Promise<string>;
}

/** Marker of a running agent in this job: a second use of the action in the same job does not start another. */
export const AGENT_MARKER = 'agent.json';

export function workDirOf(env: NodeJS.ProcessEnv): string {
  return join(env['RUNNER_TEMP'] || tmpdir(), 'ciwatch');
}

function baseState(inputs: Inputs | null, workDir: string): SavedState {
  return {
    v: 1,
    phase: 'not-started',
    reason: null,
    failure: null,
    workDir,
    outDir: join(workDir, 'out'),
    binary: '',
    sha256: '',
    stateDir: '',
    token: '',
    pid: null,
    version: inputs?.version || '',
    mode: inputs?.mode ?? 'observe',
    sign: inputs?.sign ?? 'auto',
    useSudo: false,
    failOn: inputs?.failOn ?? [],
    uploadArtifact: inputs?.uploadArtifact ?? true,
    artifactName: inputs?.artifactName ?? '',
    jobSummary: inputs?.jobSummary ?? true,
    disableSudo: inputs?.disableSudo ?? false,
  };
}

export async function runPre(d: PreDeps): Promise<void> {
  const { io, env } = d;
  const workDir = workDirOf(env);
  let inputs: Inputs;
  try {
    inputs = readInputs((name) => io.getInput(name));
  } catch (e) {
    io.saveState(STATE_KEY, encodeState({ ...baseState(null, workDir), reason: errorMessage(e), failure: 'config' }));
    io.setFailed(errorMessage(e));
    return;
  }
  const state = baseState(inputs, workDir);
  const save = (): void => io.saveState(STATE_KEY, encodeState(state));

  const notStarted = async (failure: 'unsupported' | 'agent-failure', title: string, reason: string): Promise<void> => {
    const failing = inputs.failOn.includes(failure as FailOn);
    state.reason = reason;
    state.failure = failure;
    save();
    if (inputs.jobSummary) await io.writeSummary(renderNotStarted(title, reason, failing));
    if (failing) io.setFailed(`${reason} (failing because \`fail-on\` includes \`${failure}\`)`);
    else io.warning(`${reason}. The job continues without ciwatch monitoring.`);
  };
  const configError = (input: string, message: string): void => {
    state.reason = message;
    state.failure = 'config';
    save();
    io.setFailed(new InputError(input, message).message);
  };

  if (inputs.disableSudo && d.isRoot) {
    configError('disable-sudo', 'the runner user is root: there is no sudo to take away from the job');
    return;
  }

  if (inputs.sign === 'keyless') {
    const problem = keylessPermissionError(env);
    if (problem) {
      state.reason = problem;
      state.failure = 'config';
      save();
      io.setFailed(problem);
      return;
    }
  } else if (inputs.sign === 'auto' && keylessPermissionError(env)) {
    io.info('No OIDC token is available (no `id-token: write` permission): `sign: auto` will sign with a key, not keylessly.');
  }

  const support = checkSupport(d.probe);
  if (!support.supported) {
    await notStarted('unsupported', 'runner not supported', support.reason);
    return;
  }

  // A second `uses:` of ciwatch in the same job: the first one's agent already watches the whole job.
  const marker = join(workDir, AGENT_MARKER);
  if (existsSync(marker)) {
    try {
      const prior = JSON.parse(await readFile(marker, 'utf8')) as { pid?: number };
      if (typeof prior.pid === 'number' && processAlive(prior.pid)) {
        state.reason = `ciwatch is already running in this job (pid ${prior.pid}); this use of the action does nothing`;
        save();
        io.warning(state.reason);
        return;
      }
    } catch {
      // an unreadable marker is ignored: start afresh
    }
  }

  // Files the agent reads.
  let policyFile: string | null = null;
  if (inputs.policyFile) {
    policyFile = isAbsolute(inputs.policyFile) ? inputs.policyFile : resolve(env['GITHUB_WORKSPACE'] || process.cwd(), inputs.policyFile);
    if (!existsSync(policyFile)) {
      configError('policy-file', `${JSON.stringify(inputs.policyFile)} does not exist (looked for ${policyFile})`);
      return;
    }
  }
  await mkdir(join(workDir, 'bin'), { recursive: true, mode: 0o755 });
  // A PEM key goes to the agent on stdin and is kept only in its root-only state: no file the job can read.
  let signingKeyPath: string | null = null;
  let signingKeyPem: string | null = null;
  if (inputs.signingKey) {
    if (inputs.signingKey.includes('-----BEGIN')) {
      io.setSecret(inputs.signingKey);
      signingKeyPem = inputs.signingKey.endsWith('\n') ? inputs.signingKey : inputs.signingKey + '\n';
    } else {
      signingKeyPath = isAbsolute(inputs.signingKey) ? inputs.signingKey : resolve(env['GITHUB_WORKSPACE'] || process.cwd(), inputs.signingKey);
      if (!existsSync(signingKeyPath)) {
        configError('signing-key', `is neither a PEM key nor the path of an existing file (looked for ${signingKeyPath})`);
        return;
      }
    }
  }

  // The binary.
  let source: BinarySource;
  try {
    source = resolveBinarySource(inputs, support.arch);
  } catch (e) {
    if (e instanceof BinarySourceError) {
      configError(e.input, e.message);
      return;
    }
    throw e;
  }
  state.version = source.version;
  io.info(`ciwatch ${source.version} for ${source.arch}: ${source.url}`);
  try {
    state.binary = await d.install(source, workDir);
    state.sha256 = source.sha256.toLowerCase();
  } catch (e) {
    if (e instanceof ChecksumMismatchError) {
      await notStarted(
        'agent-failure',
        'binary refused',
        `Refusing to run the downloaded ciwatch binary: its SHA-256 is ${e.actual}, but ${e.expected} was expected (${e.url}). ` +
          'The download may have been tampered with; it was deleted',
      );
      return;
    }
    if (e instanceof DownloadError) {
      await notStarted('agent-failure', 'download failed', `Could not download ciwatch: ${e.message}`);
      return;
    }
    if (e instanceof InstallError) {
      await notStarted('agent-failure', 'binary not installed', e.message);
      return;
    }
    throw e;
  }
  io.info(`Verified SHA-256 ${source.sha256}; installed as ${state.binary}`);

  // Only post holds the token (in the runner's saved state, masked): without it, a step that may run
  // `finish` through sudo (disable-sudo leaves exactly that command) cannot end the recording early.
  state.token = randomBytes(32).toString('hex');
  io.setSecret(state.token);

  // Start the agent.
  await mkdir(state.outDir, { recursive: true, mode: 0o755 });
  const args = startArgs({
    outDir: state.outDir,
    mode: inputs.mode,
    policyFile,
    allow: inputs.allowedEndpoints,
    captureArgs: inputs.captureArgs,
    sensitivePaths: inputs.sensitivePaths,
    sign: inputs.sign,
    signingKeyPath,
    signKeyStdin: signingKeyPem !== null,
    finishTokenSha256: createHash('sha256').update(state.token).digest('hex'),
    disableSudo: inputs.disableSudo,
    readyTimeoutSeconds: inputs.readyTimeoutSeconds,
  });
  // start fixes the OIDC source with the other signing choices, so it gets the request variables now.
  const childEnv = agentEnv(env, { idToken: inputs.sign === 'keyless' || inputs.sign === 'auto' });
  const cmd = privileged(state.binary, args, childEnv, d.isRoot);
  state.useSudo = !d.isRoot;
  io.info(`Starting: ${[cmd.file, ...cmd.args].map((a) => (/^[\w./=:@,+-]+$/.test(a) ? a : JSON.stringify(a))).join(' ')}`);
  const res = await d.run(cmd.file, cmd.args, {
    env: childEnv,
    timeoutMs: (inputs.readyTimeoutSeconds + 15) * 1000,
    ...(signingKeyPem !== null ? { input: signingKeyPem } : {}),
  });
  for (const line of res.stderr.split('\n').filter((l) => l.trim() !== '')) io.info(`ciwatch: ${line}`);

  if (res.spawnError || res.timedOut || res.code !== 0) {
    const why = res.spawnError
      ? `could not run ${cmd.file}: ${res.spawnError}`
      : res.timedOut
        ? `\`ciwatch start\` did not report readiness within ${inputs.readyTimeoutSeconds + 15} s`
        : classifyStartFailure(res.code).explanation;
    const kind = res.spawnError || res.timedOut ? 'agent' : classifyStartFailure(res.code).kind;
    const detail = res.stderr.trim().split('\n').slice(-3).join(' ').slice(0, 1000);
    const reason = `ciwatch did not start: ${why}${detail ? ` (${detail})` : ''}`;
    if (kind === 'config') {
      // The agent names the file, line and field; the action cannot tell which input it came from.
      state.reason = reason;
      state.failure = 'config';
      save();
      io.setFailed(reason);
      return;
    }
    await notStarted(kind === 'unsupported' ? 'unsupported' : 'agent-failure', 'agent did not start', reason);
    return;
  }

  let started;
  try {
    started = parseStartOutput(res.stdout);
  } catch (e) {
    if (!(e instanceof ContractError)) throw e;
    await notStarted('agent-failure', 'agent did not start', `ciwatch started but its readiness output is unusable: ${e.message}`);
    return;
  }
  state.phase = 'started';
  state.pid = started.pid;
  state.stateDir = started.state;
  if (started.out) state.outDir = started.out;
  save();
  await writeFile(marker, JSON.stringify({ pid: started.pid, out: state.outDir }) + '\n');

  io.info(`ciwatch is recording (pid ${started.pid}, mode ${inputs.mode}); the trace goes to ${state.outDir}`);
  if (inputs.disableSudo) io.info('sudo is disabled for the rest of this job: only the post step\'s `ciwatch finish` remains allowed');
  for (const h of started.hooks) {
    const line = `  ${h.hook}: ${h.implementation}${h.attached ? '' : ' (NOT attached)'}`;
    if (h.attached) io.info(line);
    else io.warning(`ciwatch hook ${h.hook} is not attached: its events will be missing from the trace`);
  }
}
