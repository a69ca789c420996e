// The real dist/ pre entry refusing to run: a tampered download, an unsupported runner, bad inputs. None of
// these reach `ciwatch start`, so they run now, with the contract stub as the served binary.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { downloadInputs, newJob, PLATFORM_PRELOAD, sha256, startServices, STUB, type Env } from './harness/fixture.ts';

let env: Env;
before(async () => {
  env = await startServices();
});
after(async () => {
  await env.stop();
});

const TAMPERED = Buffer.concat([STUB, Buffer.from('\n// one extra line\n')]);

describe('tampered download', () => {
  it('is refused with a warning; nothing runs; post is a no-op', async () => {
    env.gh.release = { binary: STUB, tampered: TAMPERED };
    const job = newJob(env.gh, downloadInputs(env.gh, sha256(STUB)));
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 0, 'the job continues by default');
    const w = pre.annotations.find((a) => a.level === 'warning');
    assert.ok(w, JSON.stringify(pre.annotations));
    assert.ok(w.message.includes(`its SHA-256 is ${sha256(TAMPERED)}, but ${sha256(STUB)} was expected`), w.message);
    assert.match(pre.summary, /## ciwatch: binary refused/);
    assert.match(pre.summary, /without runtime monitoring/);
    const bin = join(job.temp, 'ciwatch', 'bin', 'ciwatch');
    assert.ok(!existsSync(bin), 'the refused binary is deleted');
    assert.ok(!existsSync(join(job.temp, 'ciwatch', 'out', '.stub')), 'ciwatch start never ran');
    assert.equal(JSON.parse(pre.state['ciwatch'] ?? '{}').phase, 'not-started');

    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 0);
    assert.match(post.stdout, /the agent was not started \(Refusing to run/);
    assert.equal(post.summary, '');
    assert.deepEqual(post.outputs, {});
  });

  it('fails the job with fail-on: agent-failure', async () => {
    env.gh.release = { binary: STUB, tampered: TAMPERED };
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'fail-on': 'agent-failure' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 1);
    assert.ok(pre.annotations.some((a) => a.level === 'error' && /Refusing to run the downloaded ciwatch binary/.test(a.message)));
    assert.match(pre.summary, /\[!CAUTION\]/);
  });

  it('a download that fails once is retried and then verified', async () => {
    env.gh.release = { binary: STUB, failFirst: 1 };
    env.gh.releaseHits = 0;
    const job = newJob(env.gh, downloadInputs(env.gh, sha256(STUB)));
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 0, pre.stdout);
    assert.match(pre.stdout, /Download attempt 1 of 4 failed \(HTTP 503\); retrying/);
    assert.match(pre.stdout, /Verified SHA-256/);
    assert.equal(env.gh.releaseHits, 2);
    const post = await job.run({ kind: 'action', stage: 'post', inputs: { 'upload-artifact': 'false' } });
    assert.equal(post.exitCode, 0);
  });
});

describe('unsupported runners', () => {
  for (const [platform, os] of [
    ['darwin', 'macOS'],
    ['win32', 'Windows'],
  ] as [string, string][]) {
    it(`${os}: a warning in the log and the summary; the job continues; post does nothing`, async () => {
      env.gh.release = { binary: STUB };
      env.gh.releaseHits = 0;
      const job = newJob(env.gh, downloadInputs(env.gh, sha256(STUB)));
      const step = { kind: 'action' as const, nodeArgs: ['--import', PLATFORM_PRELOAD], env: { CIWATCH_TEST_FAKE_PLATFORM: platform } };
      const pre = await job.run({ ...step, stage: 'pre' });
      assert.equal(pre.exitCode, 0);
      assert.ok(pre.annotations.some((a) => a.level === 'warning' && a.message.includes(`this runner is ${os}`)), JSON.stringify(pre.annotations));
      assert.match(pre.summary, new RegExp(`\\[!WARNING\\]\\n> ciwatch runs on Linux runners only; this runner is ${os}`));
      assert.equal(env.gh.releaseHits, 0, 'nothing was downloaded');
      const post = await job.run({ ...step, stage: 'post' });
      assert.equal(post.exitCode, 0);
      assert.equal(post.summary, '');
    });
  }

  it('fails with fail-on: unsupported', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'fail-on': 'unsupported' });
    const pre = await job.run({ kind: 'action', stage: 'pre', nodeArgs: ['--import', PLATFORM_PRELOAD], env: { CIWATCH_TEST_FAKE_PLATFORM: 'darwin' } });
    assert.equal(pre.exitCode, 1);
    assert.ok(pre.annotations.some((a) => a.level === 'error' && /macOS/.test(a.message)));
  });
});

describe('bad input', () => {
  it('an unknown mode fails pre, naming the input', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), mode: 'block' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 1);
    assert.deepEqual(
      pre.annotations.filter((a) => a.level === 'error').map((a) => a.message),
      ['Invalid input `mode`: "block" is not one of observe, learn, enforce'],
    );
    const post = await job.run({ kind: 'action', stage: 'post' });
    assert.equal(post.exitCode, 0, 'post stays quiet after a failed pre');
  });

  it('a malformed endpoint fails pre, naming the input and the entry', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), 'allowed-endpoints': 'github.com:443\n2001:db8::1:443:x' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 1);
    assert.match(pre.annotations.find((a) => a.level === 'error')?.message ?? '', /^Invalid input `allowed-endpoints`: "2001:db8::1:443:x": not a valid IPv6 address/);
  });

  it('sign: keyless without id-token: write says which permission to add', async () => {
    const job = newJob(env.gh, { ...downloadInputs(env.gh, sha256(STUB)), sign: 'keyless' }, { ACTIONS_ID_TOKEN_REQUEST_URL: '', ACTIONS_ID_TOKEN_REQUEST_TOKEN: '' });
    const pre = await job.run({ kind: 'action', stage: 'pre' });
    assert.equal(pre.exitCode, 1);
    assert.match(pre.annotations.find((a) => a.level === 'error')?.message ?? '', /Add `permissions: id-token: write` to the job/);
  });
});
