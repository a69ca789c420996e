import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { FinishResult } from '../src/agent.ts';
import type { Uploader } from '../src/artifact.ts';
import { runPost } from '../src/post.ts';
import { FINISH_ENV } from '../src/proc.ts';
import { encodeState, STATE_KEY, type SavedState } from '../src/state.ts';
import { FakeIo, fakeRunner, finishResult, type Call } from './helpers.ts';

async function prepared(over: Partial<SavedState> = {}): Promise<SavedState> {
  const workDir = await mkdtemp(join(tmpdir(), 'ciwatch-post-'));
  const outDir = join(workDir, 'out');
  await mkdir(outDir, { recursive: true });
  for (const f of ['events.ndjson', 'attestation.intoto.jsonl', 'attestation.sigstore.json', 'summary.md']) await writeFile(join(outDir, f), `${f}\n`);
  return {
    v: 1, phase: 'started', reason: null, failure: null, workDir, outDir, binary: `/run/ciwatch/bin/ciwatch-${'a'.repeat(64)}`,
    sha256: 'a'.repeat(64), stateDir: '/run/ciwatch/0123abcd', token: 'b'.repeat(64), pid: 99,
    version: '0.1.0', mode: 'observe', sign: 'auto', useSudo: false, failOn: ['denied'], uploadArtifact: true,
    artifactName: '', jobSummary: true, disableSudo: false, ...over,
  };
}

interface Run {
  io: FakeIo;
  calls: Call[];
  uploads: { name: string; files: string[]; root: string }[];
}

async function post(state: SavedState | null, opts: { result?: (s: SavedState) => FinishResult | string; code?: number; upload?: Uploader; io?: FakeIo; env?: NodeJS.ProcessEnv; binaryProblem?: string } = {}): Promise<Run> {
  const io = opts.io ?? new FakeIo({}, state ? { [STATE_KEY]: encodeState(state) } : {});
  const uploads: Run['uploads'] = [];
  const { run, calls } = fakeRunner(() => {
    const r = state ? (opts.result ?? ((s: SavedState) => finishResult(s.outDir)))(state) : '';
    return { code: opts.code ?? 0, stdout: typeof r === 'string' ? r : JSON.stringify(r) + '\n', stderr: 'sealed\n' };
  });
  const upload: Uploader =
    opts.upload ??
    (async (name, files, root) => {
      uploads.push({ name, files, root });
      return { id: 321 };
    });
  await runPost({
    io,
    env: { GITHUB_JOB: 'build', GITHUB_REPOSITORY: 'o/r', GITHUB_RUN_ID: '5', GITHUB_RUN_ATTEMPT: '1', PATH: '/usr/bin', ACTIONS_ID_TOKEN_REQUEST_URL: 'https://oidc', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 't', ...opts.env },
    run,
    upload,
    checkBinary: async () => opts.binaryProblem ?? null,
  });
  return { io, calls, uploads };
}

describe('post: nothing to finish', () => {
  it('does nothing when pre never ran (no state)', async () => {
    const { io, calls, uploads } = await post(null);
    assert.equal(calls.length + uploads.length + io.summaries.length + io.failed.length, 0);
    assert.match(io.messages('info')[0] ?? '', /pre step did not run/);
  });
  it('does nothing when pre did not start the agent', async () => {
    const s = await prepared({ phase: 'not-started', reason: 'runner not supported' });
    const { io, calls } = await post(s);
    assert.equal(calls.length, 0);
    assert.deepEqual(io.failed, []);
    assert.match(io.messages('info')[0] ?? '', /not started \(runner not supported\)/);
  });
  it('treats garbage state as no state', async () => {
    const io = new FakeIo({}, { [STATE_KEY]: '{"v": 2}' });
    const { calls } = await post(null, { io });
    assert.equal(calls.length, 0);
  });
});

describe('post: a started agent', () => {
  it('finishes, uploads one artifact, writes the summary, sets outputs', async () => {
    const s = await prepared();
    const { io, calls, uploads } = await post(s);
    assert.equal(calls.length, 1);
    assert.equal(calls[0]?.file, s.binary);
    assert.deepEqual(calls[0]?.args, ['finish', '--state', s.stateDir, '--json']);
    assert.equal(calls[0]?.options.input, s.token + '\n', 'finish is shown the token on stdin');
    assert.equal(uploads.length, 1);
    assert.equal(uploads[0]?.name, 'ciwatch-build');
    assert.equal(uploads[0]?.root, s.outDir);
    assert.deepEqual(uploads[0]?.files, ['events.ndjson', 'attestation.intoto.jsonl', 'attestation.sigstore.json', 'summary.md'].map((f) => join(s.outDir, f)));
    assert.equal(io.summaries.length, 1);
    assert.ok(io.summaries[0]?.includes('| Run npm ci | 7 | 2 | 1 | 1 |'));
    assert.ok(io.summaries[0]?.includes('https://github.com/o/r/actions/runs/5/artifacts/321'));
    assert.equal(io.outputs['events-path'], join(s.outDir, 'events.ndjson'));
    assert.equal(io.outputs['bundle-path'], join(s.outDir, 'attestation.sigstore.json'));
    assert.equal(io.outputs['envelope-path'], join(s.outDir, 'attestation.intoto.jsonl'));
    assert.equal(io.outputs['exec-count'], '12');
    assert.equal(io.outputs['connect-count'], '3');
    assert.equal(io.outputs['denied-count'], '0');
    assert.equal(io.outputs['agent-died'], 'false');
    assert.equal(io.outputs['artifact-id'], '321');
    assert.deepEqual(io.failed, []);
  });

  it('is idempotent: when finish says it is a repeat, post re-sets the outputs without uploading again', async () => {
    const s = await prepared();
    const first = await post(s);
    const second = await post(s, { result: (st) => finishResult(st.outDir, { repeat: true }) });
    assert.equal(second.calls.length, 1, 'whether this is a repeat is finish\'s to say');
    assert.equal(second.uploads.length, 0);
    assert.equal(second.io.summaries.length, 0);
    assert.deepEqual(second.io.outputs, first.io.outputs);
    assert.match(second.io.messages('info').join('\n'), /already finished/);
  });

  it('keeps the files and warns when the upload fails', async () => {
    const s = await prepared();
    const { io } = await post(s, { upload: async () => Promise.reject(new Error('Unable to make request: ECONNREFUSED')) });
    assert.deepEqual(io.failed, []);
    assert.match(io.messages('warning').join('\n'), new RegExp(`artifact upload failed \\(Unable to make request: ECONNREFUSED\\); the files are kept on the runner in ${s.outDir}`));
    assert.ok(existsSync(join(s.outDir, 'events.ndjson')));
    assert.match(io.summaries[0] ?? '', /The artifact upload failed/);
    assert.equal(io.outputs['artifact-id'], '');
    assert.equal(io.outputs['events-path'], join(s.outDir, 'events.ndjson'));
  });

  it('fails on an upload failure only with fail-on upload-failure', async () => {
    const s = await prepared({ failOn: ['upload-failure'] });
    const { io } = await post(s, { upload: async () => Promise.reject(new Error('boom')) });
    assert.match(io.failed[0] ?? '', /artifact upload failed/);
  });

  it('reports a dead agent prominently, failing only with fail-on agent-failure', async () => {
    const s = await prepared();
    const a = await post(s, { code: 1, result: (st) => finishResult(st.outDir, { agent_died: true }) });
    assert.deepEqual(a.io.failed, []);
    assert.match(a.io.messages('error').join('\n'), /agent died during the job/);
    assert.match(a.io.summaries[0] ?? '', /\[!CAUTION\]\n> \*\*The ciwatch agent died/);
    assert.equal(a.io.outputs['agent-died'], 'true');
    const s2 = await prepared({ failOn: ['agent-failure'] });
    const b = await post(s2, { code: 1, result: (st) => finishResult(st.outDir, { agent_died: true }) });
    assert.match(b.io.failed[0] ?? '', /agent died during the job \(fail-on: agent-failure\)/);
  });

  it('fails on denied egress by default', async () => {
    const s = await prepared({ mode: 'enforce' });
    const { io } = await post(s, { result: (st) => finishResult(st.outDir, { denied: 3, denied_events: [{ addr: '203.0.113.1', port: 443 }] }) });
    assert.match(io.failed[0] ?? '', /3 connection\(s\) were denied/);
    assert.equal(io.outputs['denied-count'], '3');
    assert.match(io.summaries[0] ?? '', /Failing the job \(`fail-on`\)/);
  });

  it('fails on refused DNS lookups too, and counts them', async () => {
    const s = await prepared({ mode: 'enforce' });
    const { io } = await post(s, { result: (st) => finishResult(st.outDir, { refused_lookups: [{ host: 'exfil.example', count: 2 }] }) });
    assert.match(io.failed[0] ?? '', /2 DNS lookup\(s\) were refused/);
    assert.equal(io.outputs['refused-count'], '2');
  });

  it('fails on denied sockets too, and counts them', async () => {
    const s = await prepared({ mode: 'enforce' });
    const { io } = await post(s, { result: (st) => finishResult(st.outDir, { denied_sockets: [{ socket: 'raw', count: 3 }] }) });
    assert.match(io.failed[0] ?? '', /3 raw, packet or ping socket\(s\) were denied/);
    assert.equal(io.outputs['denied-socket-count'], '3');
  });

  it('honours fail-on none, lost-events and unsigned', async () => {
    const bad = (st: SavedState) => finishResult(st.outDir, { denied: 1, lost: 4, signing: { method: 'none', fallback: 'no OIDC token and no key', identity: '', verify_command: '' } });
    const none = await post(await prepared({ failOn: [] }), { code: 1, result: bad });
    assert.deepEqual(none.io.failed, []);
    assert.match(none.io.messages('warning').join('\n'), /lost 4 event/);
    const some = await post(await prepared({ failOn: ['lost-events', 'unsigned'] }), { code: 1, result: bad });
    assert.match(some.io.failed[0] ?? '', /4 event\(s\) were lost.*not signed/);
  });

  it('uploads what the agent left when finish breaks the contract', async () => {
    const s = await prepared({ failOn: ['agent-failure'] });
    await writeFile(join(s.outDir, 'events.ndjson.partial'), '{}\n');
    const { io, uploads } = await post(s, { code: 70, result: () => 'thread main panicked' });
    assert.match(io.messages('error')[0] ?? '', /could not seal the trace: `ciwatch finish` exited with 70: .*printed no JSON object/);
    assert.ok(uploads[0]?.files.includes(join(s.outDir, 'events.ndjson.partial')));
    assert.match(io.failed[0] ?? '', /could not seal the trace/);
    assert.equal(io.outputs['agent-died'], 'true');
  });

  it('skips the upload and the summary when both are off', async () => {
    const s = await prepared({ uploadArtifact: false, jobSummary: false });
    const { io, uploads } = await post(s);
    assert.equal(uploads.length, 0);
    assert.equal(io.summaries.length, 0);
    assert.equal(io.outputs['artifact-name'], '');
  });

  it('finishes through sudo with exactly the command disable-sudo leaves allowed', async () => {
    const s = await prepared({ useSudo: true, sign: 'key' });
    const { calls } = await post(s);
    assert.equal(calls[0]?.file, 'sudo');
    assert.deepEqual(calls[0]?.args, ['-n', '--', s.binary, 'finish', '--state', s.stateDir, '--json']);
  });

  it('names the artifact after the job and its backend id so matrix legs do not collide', async () => {
    const s = await prepared();
    const claims = Buffer.from(JSON.stringify({ scp: 'Actions.GenericRead Actions.Results:11111111-2222:abcdef12-3456-7890' })).toString('base64url');
    const { uploads } = await post(s, { env: { ACTIONS_RUNTIME_TOKEN: `x.${claims}.y`, GITHUB_RUN_ATTEMPT: '2' } });
    assert.equal(uploads[0]?.name, 'ciwatch-build-abcdef12-attempt2');
  });
});

describe('post: what a step planted has no effect', () => {
  it('a planted post-done.json does not skip finish, the upload or fail-on', async () => {
    const s = await prepared();
    await writeFile(join(s.workDir, 'post-done.json'), JSON.stringify({ outputs: { 'agent-died': 'false' }, failures: [] }));
    const { io, calls, uploads } = await post(s, { result: (st) => finishResult(st.outDir, { denied: 2 }) });
    assert.equal(calls.length, 1, 'finish ran');
    assert.equal(uploads.length, 1, 'the trace was uploaded');
    assert.match(io.failed[0] ?? '', /2 connection\(s\) were denied/);
    assert.equal(io.outputs['denied-count'], '2');
  });

  it('nothing set through $GITHUB_ENV reaches finish: its environment is fixed', async () => {
    const planted = {
      CIWATCH_SIGNING_KEY: '/tmp/attacker.pem',
      CIWATCH_FULCIO_URL: 'https://fulcio.attacker.example',
      CIWATCH_REKOR_URL: 'https://rekor.attacker.example',
      CIWATCH_SIGNING_TRUSTED_ROOT: '/tmp/attacker-root.json',
      SIGSTORE_ID_TOKEN: 'attacker.jwt.token',
      HTTPS_PROXY: 'http://127.0.0.1:9',
      https_proxy: 'http://127.0.0.1:9',
      SSL_CERT_FILE: '/tmp/attacker-ca.pem',
      ACTIONS_ID_TOKEN_REQUEST_URL: 'https://oidc.attacker.example',
    };
    for (const useSudo of [false, true]) {
      const s = await prepared({ useSudo });
      const { calls } = await post(s, { env: planted });
      assert.deepEqual(calls[0]?.options.env, { ...FINISH_ENV });
      assert.ok(!calls[0]?.args.some((a) => a.startsWith('--preserve-env')), calls[0]?.args.join(' '));
      for (const value of Object.values(planted)) assert.ok(!calls[0]?.args.includes(value));
    }
  });

  it('refuses to run a binary that is not the root-owned copy pre installed', async () => {
    const s = await prepared({ failOn: ['agent-failure'] });
    const { io, calls } = await post(s, { binaryProblem: `its SHA-256 is ${'c'.repeat(64)}, not the pinned ${'a'.repeat(64)}` });
    assert.equal(calls.length, 0);
    assert.match(io.messages('error')[0] ?? '', /refusing to run .*not the binary pre installed: its SHA-256 is c{64}/);
    assert.match(io.failed[0] ?? '', /could not seal the trace/);
    assert.equal(io.outputs['agent-died'], 'true');
  });
});
