// The action's dist/ entries in an emulated job, against the CONTRACT STUB of ciwatch (harness/fake-ciwatch.mjs)
// and the real artifact client talking to the fake Twirp service backed by Azurite. These run now; the same
// flow with the real binary is full-flow.test.ts.

import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { artifactFiles, downloadInputs, newJob, sha256, startServices, STUB, type Env } from './harness/fixture.ts';
import { freePort } from './harness/services.ts';

let env: Env;
before(async () => {
  env = await startServices();
  env.gh.release = { binary: STUB };
});
after(async () => {
  await env.stop();
});

function calls(outDir: string): { argv: string[]; env: string[]; stdinBytes: number }[] {
  return readFileSync(join(outDir, '.stub', 'calls.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

describe('action with the contract stub', () => {
  it('pre starts the agent, post uploads one artifact to Azurite, writes the summary and sets outputs', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'allowed-endpoints': 'github.com:443', 'sensitive-paths': '/opt/secret/*', 'artifact-name': 'trace-observe' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 0, pre.stdout + pre.stderr);
    assert.deepEqual(pre.annotations.filter((a) => a.level !== 'debug'), []);
    assert.match(pre.stdout, /Verified SHA-256/);
    const state = JSON.parse(pre.state['ciwatch'] ?? '{}');
    assert.equal(state.phase, 'started');
    const outDir: string = state.outDir;
    assert.equal(outDir, join(job.temp, 'ciwatch', 'out'));

    const start = calls(outDir)[0]!;
    assert.deepEqual(start.argv.slice(0, 5), ['start', '--out', outDir, '--mode', 'observe']);
    assert.ok(start.argv.join(' ').includes('--allow github.com:443 --capture-args redacted --sensitive-path /opt/secret/* --sign auto'));
    assert.ok(!start.env.includes('ACTIONS_RUNTIME_TOKEN'), 'the runtime token is not handed to the agent');
    assert.ok(start.env.includes('ACTIONS_ID_TOKEN_REQUEST_TOKEN'), 'start fixes the OIDC source, as keyless may sign');
    assert.match(start.argv[start.argv.indexOf('--finish-token-sha256') + 1] ?? '', /^[0-9a-f]{64}$/);
    assert.match(state.binary, /^\/run\/ciwatch\/bin\/ciwatch-[0-9a-f]{64}$/, 'the agent runs from the root-owned copy');
    assert.ok(start.env.includes('RUNNER_TRACKING_ID'));

    const fetch = await job.run({ kind: 'run', name: 'Fetch from loopback', script: 'echo fetching\n' });
    assert.equal(fetch.exitCode, 0);
    const main = await job.run({ kind: 'action', stage: 'main' });
    assert.equal(main.exitCode, 0);
    assert.match(main.stdout, /ciwatch is recording \(pid \d+\)/);

    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 0, post.stdout + post.stderr);
    assert.deepEqual(post.annotations.filter((a) => a.level === 'warning' || a.level === 'error'), []);
    const finish = calls(outDir)[1]!;
    assert.deepEqual(finish.argv, ['finish', '--state', state.stateDir, '--json']);
    assert.deepEqual(finish.env, ['PATH'], 'finish gets a fixed environment');
    assert.equal(finish.stdinBytes, 65, 'finish is shown the token');

    // The artifact, as stored in Azurite.
    const finalized = env.gh.artifacts.filter((a) => a.name === 'trace-observe' && a.finalized);
    assert.equal(finalized.length, 1);
    const record = finalized[0]!;
    assert.equal(record.version, 7);
    const { zip, files } = await artifactFiles(env.azurite, record);
    assert.equal(record.hash, `sha256:${sha256(zip)}`);
    assert.equal(record.size, zip.length);
    assert.deepEqual([...files.keys()].sort(), ['attestation.intoto.jsonl', 'attestation.sigstore.json', 'events.ndjson', 'summary.md']);
    for (const [name, bytes] of files) assert.ok(bytes.equals(readFileSync(join(outDir, name))), `${name} in the artifact equals the file on disk`);
    assert.match(files.get('events.ndjson')!.toString(), /"trace_start"[\s\S]*"trace_end"/);

    // The job summary.
    assert.match(post.summary, /## ciwatch runtime trace/);
    assert.ok(post.summary.includes('| Fetch from loopback | 2 | 1 | 0 | 0 |'), post.summary);
    assert.ok(post.summary.includes('| Read a secret | 1 | 0 | 1 | 1 |'));
    assert.ok(post.summary.includes('| 127.0.0.2:8080 | tcp |  | Fetch from loopback |'));
    assert.ok(post.summary.includes('| /root/.ssh/id\\_ed25519 | Read a secret |'));
    assert.match(post.summary, /```sh\nciwatch verify --bundle attestation\.sigstore\.json/);
    assert.ok(post.summary.includes(`[\`trace-observe\`](https://github.com/octo/demo/actions/runs/1000/artifacts/${record.id})`));
    assert.ok(Buffer.byteLength(post.summary) < 1024 * 1024);

    // The outputs.
    assert.equal(post.outputs['events-path'], join(outDir, 'events.ndjson'));
    assert.equal(post.outputs['bundle-path'], join(outDir, 'attestation.sigstore.json'));
    assert.equal(post.outputs['envelope-path'], join(outDir, 'attestation.intoto.jsonl'));
    assert.equal(post.outputs['exec-count'], '3');
    assert.equal(post.outputs['denied-count'], '0');
    assert.equal(post.outputs['agent-died'], 'false');
    assert.equal(post.outputs['artifact-id'], String(record.id));
    assert.equal(post.outputs['signing-method'], 'keyless');

    // Post again (idempotent): same outputs, no second finish, no second artifact.
    const again = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(again.exitCode, 0);
    assert.deepEqual(again.outputs, post.outputs);
    assert.equal(calls(outDir).length, 3, 'finish ran again and said it was a repeat');
    assert.equal(env.gh.artifacts.filter((a) => a.name === 'trace-observe').length, 1);
  });

  it('the artifact service down: a warning, and the files are kept', async () => {
    const deadPort = await freePort();
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'artifact-name': 'trace-down' }, { ACTIONS_RESULTS_URL: `http://127.0.0.1:${deadPort}/` });
    assert.equal((await job.run({ kind: 'action', stage: 'pre' })).exitCode, 0);
    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 0, 'an upload failure does not fail the job by default');
    const warning = post.annotations.find((a) => a.level === 'warning' && /artifact upload failed/.test(a.message));
    assert.ok(warning, JSON.stringify(post.annotations));
    const outDir = join(job.temp, 'ciwatch', 'out');
    assert.ok(warning.message.includes(`the files are kept on the runner in ${outDir}`));
    for (const f of ['events.ndjson', 'attestation.intoto.jsonl', 'attestation.sigstore.json', 'summary.md']) assert.ok(existsSync(join(outDir, f)), f);
    assert.match(post.summary, /The artifact upload failed/);
    assert.equal(post.outputs['artifact-id'], '');
    assert.equal(post.outputs['events-path'], join(outDir, 'events.ndjson'));
    assert.equal(env.gh.artifacts.filter((a) => a.name === 'trace-down').length, 0);
  });

  it('fails the job on a failed upload with fail-on: upload-failure', async () => {
    const deadPort = await freePort();
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'fail-on': 'upload-failure' }, { ACTIONS_RESULTS_URL: `http://127.0.0.1:${deadPort}/` });
    await job.run({ kind: 'action', stage: 'pre' });
    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 1);
    assert.ok(post.annotations.some((a) => a.level === 'error' && /artifact upload failed \(fail-on: upload-failure\)/.test(a.message)));
  });

  it('the agent killed mid-job: reported in the log, the summary and the outputs', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'artifact-name': 'trace-killed' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    const pid = JSON.parse(pre.state['ciwatch'] ?? '{}').pid as number;
    await job.run({ kind: 'run', name: 'Kill the agent', script: `kill -9 ${pid}\n` });
    const main = await job.run({ kind: 'action', stage: 'main' });
    assert.ok(main.annotations.some((a) => a.level === 'warning' && /no longer running/.test(a.message)));
    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 0, 'default fail-on does not include agent-failure');
    assert.ok(post.annotations.some((a) => a.level === 'error' && /agent died during the job/.test(a.message)), JSON.stringify(post.annotations));
    assert.match(post.summary, /> \[!CAUTION\]\n> \*\*The ciwatch agent died during this job\.\*\*/);
    assert.ok(post.summary.indexOf('[!CAUTION]') < post.summary.indexOf('### Steps'), 'the notice comes first');
    assert.equal(post.outputs['agent-died'], 'true');
    assert.equal(env.gh.artifacts.filter((a) => a.name === 'trace-killed' && a.finalized).length, 1, 'the incomplete trace is still uploaded');
  });

  it('fails the job when the agent died and fail-on includes agent-failure', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'fail-on': 'agent-failure, denied', 'upload-artifact': 'false' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    process.kill(JSON.parse(pre.state['ciwatch'] ?? '{}').pid as number, 'SIGKILL');
    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 1);
    assert.match(post.summary, /Failing the job \(`fail-on`\): the ciwatch agent died/);
  });

  it('enforce with denials fails the job by default and lists them', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), mode: 'enforce', 'allowed-endpoints': 'github.com:443', 'upload-artifact': 'false' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 0);
    const canned = join(job.temp, 'ciwatch', 'out', '.stub', 'canned.json');
    writeFileSync(canned, JSON.stringify({ denied: 1, denied_events: [{ addr: '203.0.113.7', port: 443, hosts: ['exfil.example'], steps: ['step-fetch'], comm: 'curl' }] }));
    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 1);
    assert.ok(post.summary.includes('| 203.0.113.7:443 | exfil.example | Fetch from loopback | curl | 1 |'), post.summary);
    assert.equal(post.outputs['denied-count'], '1');
  });
});
