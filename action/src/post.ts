// post: seal and sign (`ciwatch finish`), upload the trace as one artifact, write the job summary, set the
// outputs, and apply `fail-on`. Safe when pre failed or never ran, and idempotent: a second run reports the
// first run's result again instead of finishing twice.

import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ContractError, finishArgs, parseFinishOutput, type FinishResult } from './agent.ts';
import { artifactUrl, defaultArtifactName, traceFiles, type Uploader } from './artifact.ts';
import type { FailOn } from './inputs.ts';
import { errorMessage, type Io } from './io.ts';
import { agentEnv, privileged, type ProcessRunner } from './proc.ts';
import { decodeState, STATE_KEY, type SavedState } from './state.ts';
import { ARTIFACT_FILES, deniedSocketCount, refusedCount, renderSummary, type ArtifactInfo } from './summary.ts';

export interface PostDeps {
  io: Io;
  env: NodeJS.ProcessEnv;
  run: ProcessRunner;
  upload: Uploader;
  /** `ciwatch finish` bound; signing may retry Fulcio/Rekor */
  finishTimeoutMs?: number;
}

export const POST_MARKER = 'post-done.json';

type Outputs = Record<string, string>;

interface Done {
  outputs: Outputs;
  failures: string[];
}

function outputsOf(r: FinishResult | null, artifact: ArtifactInfo, outDir: string): Outputs {
  return {
    'out-dir': outDir,
    'events-path': r?.events ?? '',
    'envelope-path': r?.envelope ?? '',
    'bundle-path': r?.bundle ?? '',
    'summary-path': r?.summary ?? '',
    'exec-count': String(r?.counts.exec ?? 0),
    'connect-count': String(r?.counts.connect ?? 0),
    'dns-count': String(r?.counts.dns ?? 0),
    'file-count': String(r?.counts.file ?? 0),
    'denied-count': String(r?.denied ?? 0),
    'refused-count': String(r ? refusedCount(r) : 0),
    'denied-socket-count': String(r ? deniedSocketCount(r) : 0),
    'lost-count': String(r?.lost ?? 0),
    'agent-died': String(r ? r.agent_died : true),
    'signing-method': r?.signing.method ?? 'none',
    'verify-command': r?.signing.verify_command ?? '',
    'artifact-name': artifact.enabled && !artifact.error ? artifact.name : '',
    'artifact-id': artifact.id === null ? '' : String(artifact.id),
    'artifact-url': artifact.url ?? '',
  };
}

function failuresOf(failOn: FailOn[], r: FinishResult | null, finishError: string | null, artifact: ArtifactInfo): string[] {
  const out: string[] = [];
  const on = (f: FailOn): boolean => failOn.includes(f);
  if (r) {
    if (on('denied') && r.denied > 0) out.push(`${r.denied} connection(s) were denied by the egress policy (fail-on: denied)`);
    const refused = refusedCount(r);
    if (on('denied') && refused > 0) out.push(`${refused} DNS lookup(s) were refused by the egress policy (fail-on: denied)`);
    const sockets = deniedSocketCount(r);
    if (on('denied') && sockets > 0) out.push(`${sockets} raw, packet or ping socket(s) were denied by the policy (fail-on: denied)`);
    if (on('lost-events') && r.lost > 0) out.push(`${r.lost} event(s) were lost (fail-on: lost-events)`);
    if (on('agent-failure') && r.agent_died) out.push('the ciwatch agent died during the job (fail-on: agent-failure)');
    if (on('unsigned') && r.signing.method === 'none') out.push('the trace is not signed (fail-on: unsigned)');
  } else if (on('agent-failure')) {
    out.push(`ciwatch could not seal the trace: ${finishError ?? 'unknown error'} (fail-on: agent-failure)`);
  }
  if (on('upload-failure') && artifact.enabled && artifact.error) out.push(`the artifact upload failed (fail-on: upload-failure)`);
  return out;
}

async function removeKey(state: SavedState): Promise<void> {
  if (state.keyFile) await rm(state.keyFile, { force: true });
}

export async function runPost(d: PostDeps): Promise<void> {
  const { io, env } = d;
  const state = decodeState(io.getState(STATE_KEY));
  if (!state) {
    io.info('ciwatch: the pre step did not run or saved no state; there is nothing to finish.');
    return;
  }
  if (state.phase !== 'started') {
    io.info(`ciwatch: the agent was not started${state.reason ? ` (${state.reason})` : ''}; there is nothing to finish.`);
    await removeKey(state);
    return;
  }

  const donePath = join(state.workDir, POST_MARKER);
  if (existsSync(donePath)) {
    try {
      const done = JSON.parse(await readFile(donePath, 'utf8')) as Done;
      for (const [k, v] of Object.entries(done.outputs)) io.setOutput(k, v);
      io.info('ciwatch: the trace was already finished by an earlier post step; its outputs are set again.');
      if (done.failures.length > 0) io.setFailed(done.failures.join('; '));
      return;
    } catch (e) {
      io.warning(`ciwatch: ignoring an unreadable ${donePath}: ${errorMessage(e)}`);
    }
  }

  // Seal and sign.
  const childEnv = agentEnv(env, { idToken: state.sign === 'keyless' || state.sign === 'auto' });
  const cmd = privileged(state.binary, finishArgs(state.outDir), childEnv, !state.useSudo);
  const res = await d.run(cmd.file, cmd.args, { env: childEnv, timeoutMs: d.finishTimeoutMs ?? 10 * 60_000 });
  for (const line of res.stderr.split('\n').filter((l) => l.trim() !== '')) io.info(`ciwatch: ${line}`);

  let result: FinishResult | null = null;
  let finishError: string | null = null;
  if (res.spawnError) finishError = `could not run ${cmd.file}: ${res.spawnError}`;
  else if (res.timedOut) finishError = '`ciwatch finish` did not complete in time';
  else {
    try {
      result = parseFinishOutput(res.stdout);
    } catch (e) {
      if (!(e instanceof ContractError)) throw e;
      const detail = res.stderr.trim().split('\n').slice(-3).join(' ').slice(0, 1000);
      finishError = `\`ciwatch finish\` exited with ${res.code ?? res.signal}: ${e.message}${detail ? ` (${detail})` : ''}`;
    }
  }
  if (result && res.code !== 0 && !result.agent_died && result.lost === 0) {
    io.warning(`\`ciwatch finish\` exited with ${res.code ?? res.signal} although it reported no lost events and a live agent`);
  }

  // The files: what finish named, else whatever the agent left in the output directory.
  const files = result
    ? traceFiles([result.events, result.envelope, result.bundle, result.summary])
    : traceFiles([...ARTIFACT_FILES, 'events.ndjson.partial'].map((f) => join(state.outDir, f)));

  const artifact: ArtifactInfo = {
    name: state.artifactName || defaultArtifactName(env),
    enabled: state.uploadArtifact,
    id: null,
    url: null,
    error: null,
  };
  if (artifact.enabled) {
    if (files.length === 0) {
      artifact.error = 'the agent wrote no trace file';
    } else {
      try {
        const up = await d.upload(artifact.name, files, state.outDir);
        artifact.id = up.id;
        artifact.url = artifactUrl(env, up.id);
        io.info(`ciwatch: uploaded ${files.length} file(s) as artifact ${artifact.name}${up.id !== null ? ` (id ${up.id})` : ''}`);
      } catch (e) {
        artifact.error = errorMessage(e);
      }
    }
    if (artifact.error) {
      io.warning(`ciwatch: the artifact upload failed (${artifact.error}); the files are kept on the runner in ${state.outDir}`);
    }
  }

  // Make what went wrong visible whatever fail-on says.
  if (finishError) io.error(`ciwatch could not seal the trace: ${finishError}`);
  if (result?.agent_died) io.error('The ciwatch agent died during the job: the trace is incomplete.');
  if (result && result.lost > 0) io.warning(`ciwatch lost ${result.lost} event(s): the trace is incomplete.`);
  if (result && result.denied > 0) io.warning(`ciwatch denied ${result.denied} connection(s); see the job summary.`);
  if (result?.signing.fallback) io.warning(`ciwatch signing fell back: ${result.signing.fallback}`);

  const failures = failuresOf(state.failOn, result, finishError, artifact);
  if (state.jobSummary) {
    const md = renderSummary(result, {
      mode: state.mode,
      version: state.version,
      outDir: state.outDir,
      artifact,
      finishError,
      failures,
    });
    try {
      await io.writeSummary(md);
    } catch (e) {
      io.warning(`ciwatch: could not write the job summary: ${errorMessage(e)}`);
    }
  }

  const outputs = outputsOf(result, artifact, state.outDir);
  for (const [k, v] of Object.entries(outputs)) io.setOutput(k, v);
  const done: Done = { outputs, failures };
  await writeFile(donePath, JSON.stringify(done) + '\n');
  await rm(join(state.workDir, 'agent.json'), { force: true });
  await removeKey(state);
  if (failures.length > 0) io.setFailed(`ciwatch: ${failures.join('; ')}`);
}
