// post: seal and sign (`ciwatch finish`), upload the trace as one artifact, write the job summary, set the
// outputs, and apply `fail-on`. Safe when pre failed or never ran, and idempotent: a second run reports the
// first run's result again instead of finishing twice.
//
// What post acts on comes from the runner-held step state and from `finish`, never from a file in
// $RUNNER_TEMP (which every step can write): it runs the root-owned binary pre installed, after checking it
// and its digest again, with a fixed environment, and the token only it holds. Whether this is a repeat is
// `finish`'s to say; only then is post-done.json read, for the first run's artifact outputs.

import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ContractError, finishArgs, parseFinishOutput, type FinishResult } from './agent.ts';
import { artifactUrl, defaultArtifactName, traceFiles, type Uploader } from './artifact.ts';
import type { FailOn } from './inputs.ts';
import { errorMessage, type Io } from './io.ts';
import { FINISH_ENV, privileged, type ProcessRunner } from './proc.ts';
import { decodeState, STATE_KEY, type SavedState } from './state.ts';
import { ARTIFACT_FILES, deniedSocketCount, refusedCount, renderSummary, type ArtifactInfo } from './summary.ts';

export interface PostDeps {
  io: Io;
  env: NodeJS.ProcessEnv;
  run: ProcessRunner;
  upload: Uploader;
  /** why the binary pre installed is no longer root's own with the pinned digest, or null */
  checkBinary: (path: string, sha256: string) => Promise<string | null>;
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

/** The first post's outputs and failures; only read once `finish` says this post is a repeat. */
async function readDone(path: string, io: Io): Promise<Done | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Done;
  } catch (e) {
    io.warning(`ciwatch: ignoring an unreadable ${path}: ${errorMessage(e)}`);
    return null;
  }
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
    return;
  }

  const { result, finishError, code } = await runFinish(d, state);
  if (result && code !== 0 && !result.agent_died && result.lost === 0) {
    io.warning(`\`ciwatch finish\` exited with ${code} although it reported no lost events and a live agent`);
  }

  const donePath = join(state.workDir, POST_MARKER);
  if (result?.repeat) {
    const done = await readDone(donePath, io);
    const outputs = done?.outputs ?? outputsOf(result, { name: '', enabled: false, id: null, url: null, error: null }, state.outDir);
    for (const [k, v] of Object.entries(outputs)) io.setOutput(k, v);
    io.info('ciwatch: the trace was already finished by an earlier post step; its outputs are set again.');
    const failures = done?.failures ?? failuresOf(state.failOn, result, null, { name: '', enabled: false, id: null, url: null, error: null });
    if (failures.length > 0) io.setFailed(failures.join('; '));
    return;
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
  if (failures.length > 0) io.setFailed(`ciwatch: ${failures.join('; ')}`);
}

/** Seals and signs: the checked root-owned binary, a fixed environment, the token on stdin. */
async function runFinish(
  d: PostDeps,
  state: SavedState,
): Promise<{ result: FinishResult | null; finishError: string | null; code: number | string | null }> {
  const problem = await d.checkBinary(state.binary, state.sha256);
  if (problem) return { result: null, finishError: `refusing to run ${state.binary}, which is not the binary pre installed: ${problem}`, code: null };
  const cmd = privileged(state.binary, finishArgs(state.stateDir), {}, !state.useSudo);
  const res = await d.run(cmd.file, cmd.args, { env: { ...FINISH_ENV }, input: state.token + '\n', timeoutMs: d.finishTimeoutMs ?? 10 * 60_000 });
  for (const line of res.stderr.split('\n').filter((l) => l.trim() !== '')) d.io.info(`ciwatch: ${line}`);
  const code = res.code ?? res.signal;
  if (res.spawnError) return { result: null, finishError: `could not run ${cmd.file}: ${res.spawnError}`, code };
  if (res.timedOut) return { result: null, finishError: '`ciwatch finish` did not complete in time', code };
  try {
    return { result: parseFinishOutput(res.stdout), finishError: null, code };
  } catch (e) {
    if (!(e instanceof ContractError)) throw e;
    const detail = res.stderr.trim().split('\n').slice(-3).join(' ').slice(0, 1000);
    return { result: null, finishError: `\`ciwatch finish\` exited with ${code}: ${e.message}${detail ? ` (${detail})` : ''}`, code };
  }
}
