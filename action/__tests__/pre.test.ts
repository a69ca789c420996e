import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ChecksumMismatchError, DownloadError, type BinarySource } from '../src/binary.ts';
import { InstallError } from '../src/install.ts';
import type { PlatformProbe } from '../src/platform.ts';
import { runPre } from '../src/pre.ts';
import { decodeState, STATE_KEY } from '../src/state.ts';
import { FakeIo, fakeRunner, type Call } from './helpers.ts';

const SHA = 'a'.repeat(64);
const linux: PlatformProbe = { platform: 'linux', arch: 'x64', exists: () => true };
const ROOT_BIN = `/run/ciwatch/bin/ciwatch-${SHA}`;
const READY = JSON.stringify({ pid: 4242, out: 'OUT', state: '/run/ciwatch/0123abcd', hooks: [{ hook: 'exec', implementation: 'tracepoint/sched/sched_process_exec', attached: true }, { hook: 'file', implementation: 'tracepoint/syscalls/sys_enter_openat', attached: false }] });

async function setup(inputs: Record<string, string>, opts: { probe?: PlatformProbe; root?: boolean; env?: NodeJS.ProcessEnv; answer?: (c: Call) => object; install?: (s: BinarySource, d: string) => Promise<string> } = {}) {
  const temp = await mkdtemp(join(tmpdir(), 'ciwatch-pre-'));
  const io = new FakeIo({ 'binary-url': 'https://mirror.example/ciwatch', 'binary-sha256': SHA, ...inputs });
  const installs: { source: BinarySource; dest: string }[] = [];
  const { run, calls } = fakeRunner(opts.answer ?? ((c) => ({ stdout: READY.replace('OUT', c.args[c.args.indexOf('--out') + 1] ?? '') })));
  const env = { RUNNER_TEMP: temp, GITHUB_WORKSPACE: temp, GITHUB_RUN_ID: '1', PATH: '/usr/bin', ACTIONS_RUNTIME_TOKEN: 'secret', ...opts.env };
  await runPre({
    io,
    env,
    probe: opts.probe ?? linux,
    isRoot: opts.root ?? true,
    run,
    install:
      opts.install ??
      (async (source, workDir) => {
        installs.push({ source, dest: workDir });
        return ROOT_BIN;
      }),
  });
  const state = decodeState(io.saved[STATE_KEY] ?? '');
  return { io, calls, installs, state, temp };
}

describe('pre: unsupported runners', () => {
  for (const [name, probe, reason] of [
    ['Windows', { platform: 'win32', arch: 'x64', exists: () => true }, /Linux runners only; this runner is Windows/],
    ['macOS', { platform: 'darwin', arch: 'arm64', exists: () => true }, /this runner is macOS/],
    ['no BTF', { platform: 'linux', arch: 'x64', exists: () => false }, /no BTF \(\/sys\/kernel\/btf\/vmlinux is missing\)/],
    ['s390x', { platform: 'linux', arch: 's390x', exists: () => true }, /no build for the s390x/],
  ] as [string, PlatformProbe, RegExp][]) {
    it(`${name}: warns in the log and the summary, and the job continues`, async () => {
      const { io, calls, installs, state } = await setup({}, { probe });
      assert.deepEqual(io.failed, []);
      assert.match(io.messages('warning')[0] ?? '', reason);
      assert.match(io.messages('warning')[0] ?? '', /continues without ciwatch monitoring/);
      assert.equal(io.summaries.length, 1);
      assert.match(io.summaries[0] ?? '', /\[!WARNING\]/);
      assert.match((io.summaries[0] ?? '').replace(/\\/g, ''), reason, 'the summary carries the reason (markdown-escaped)');
      assert.equal(calls.length, 0);
      assert.equal(installs.length, 0);
      assert.equal(state?.phase, 'not-started');
      assert.equal(state?.failure, 'unsupported');
    });
  }
  it('fails the job when fail-on includes unsupported', async () => {
    const { io } = await setup({ 'fail-on': 'unsupported' }, { probe: { platform: 'darwin', arch: 'arm64', exists: () => true } });
    assert.equal(io.failed.length, 1);
    assert.match(io.failed[0] ?? '', /macOS.*fail-on.*unsupported/);
    assert.match(io.summaries[0] ?? '', /\[!CAUTION\]/);
  });
  it('writes no summary when job-summary is false', async () => {
    const { io } = await setup({ 'job-summary': 'false' }, { probe: { platform: 'win32', arch: 'x64', exists: () => true } });
    assert.equal(io.summaries.length, 0);
    assert.equal(io.messages('warning').length, 1);
  });
});

describe('pre: bad input', () => {
  it('fails with the input named, before touching the runner', async () => {
    const { io, calls, installs, state } = await setup({ mode: 'audit' });
    assert.equal(io.failed.length, 1);
    assert.match(io.failed[0] ?? '', /Invalid input `mode`: "audit" is not one of observe, learn, enforce/);
    assert.equal(calls.length + installs.length, 0);
    assert.equal(state?.phase, 'not-started');
  });
  it('fails on a malformed endpoint', async () => {
    const { io } = await setup({ 'allowed-endpoints': 'github.com:99999' });
    assert.match(io.failed[0] ?? '', /Invalid input `allowed-endpoints`: "github.com:99999": port 99999 is out of range/);
  });
  it('says which permission keyless signing needs', async () => {
    const { io, calls } = await setup({ sign: 'keyless' });
    assert.match(io.failed[0] ?? '', /add `permissions: id-token: write`/i);
    assert.equal(calls.length, 0);
  });
  it('accepts keyless when the OIDC variables exist', async () => {
    const { io } = await setup({ sign: 'keyless' }, { env: { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://x', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 't' } });
    assert.deepEqual(io.failed, []);
  });
  it('fails on a missing policy file', async () => {
    const { io } = await setup({ 'policy-file': 'nope.yml' });
    assert.match(io.failed[0] ?? '', /Invalid input `policy-file`: "nope.yml" does not exist/);
  });
});

describe('pre: binary', () => {
  it('refuses a binary whose checksum does not match, warns, and does not start', async () => {
    const { io, calls, state } = await setup({}, { install: async (s) => Promise.reject(new ChecksumMismatchError(s.url, s.sha256, 'b'.repeat(64))) });
    assert.deepEqual(io.failed, []);
    assert.match(io.messages('warning')[0] ?? '', /Refusing to run the downloaded ciwatch binary: its SHA-256 is b{64}, but a{64} was expected/);
    assert.match(io.summaries[0] ?? '', /binary refused/);
    assert.equal(calls.length, 0);
    assert.equal(state?.failure, 'agent-failure');
  });
  it('fails the job on a refused binary with fail-on agent-failure', async () => {
    const { io } = await setup({ 'fail-on': 'agent-failure' }, { install: async (s) => Promise.reject(new ChecksumMismatchError(s.url, s.sha256, 'b'.repeat(64))) });
    assert.match(io.failed[0] ?? '', /Refusing to run/);
  });
  it('reports a failed download', async () => {
    const { io } = await setup({}, { install: async () => Promise.reject(new DownloadError('downloading x failed after 4 attempts: HTTP 503', 4)) });
    assert.match(io.messages('warning')[0] ?? '', /Could not download ciwatch: downloading x failed after 4 attempts/);
  });
  it('fails when no version is pinned and no custom URL is given', async () => {
    const { io } = await setup({ 'binary-url': '', 'binary-sha256': '' });
    assert.match(io.failed[0] ?? '', /Invalid input `version`: this build of the action pins no released ciwatch version/);
  });
});

describe('pre: start', () => {
  it('starts the agent as root with the inputs as argv and saves the state', async () => {
    const { io, calls, installs, state, temp } = await setup({
      mode: 'learn',
      'allowed-endpoints': 'github.com:443\n*.npmjs.org',
      'sensitive-paths': '/opt/*.key',
      'capture-args': 'none',
      'ready-timeout': '20',
      'artifact-name': 'trace',
      'fail-on': 'lost-events',
    });
    assert.deepEqual(io.failed, []);
    assert.equal(installs[0]?.source.url, 'https://mirror.example/ciwatch');
    assert.equal(calls.length, 1);
    const out = join(temp, 'ciwatch', 'out');
    assert.equal(installs[0]?.dest, join(temp, 'ciwatch'));
    assert.equal(calls[0]?.file, ROOT_BIN, 'the agent starts from the root-owned copy, not the download in $RUNNER_TEMP');
    const digest = createHash('sha256').update(state?.token ?? '').digest('hex');
    assert.deepEqual(calls[0]?.args, ['start', '--out', out, '--mode', 'learn', '--allow', 'github.com:443', '--allow', '*.npmjs.org', '--capture-args', 'none', '--sensitive-path', '/opt/*.key', '--sign', 'auto', '--finish-token-sha256', digest, '--ready-timeout', '20']);
    assert.match(state?.token ?? '', /^[0-9a-f]{64}$/);
    assert.ok(io.secrets.includes(state?.token ?? ''), 'the token is masked');
    assert.equal(state?.binary, ROOT_BIN);
    assert.equal(state?.sha256, SHA);
    assert.equal(state?.stateDir, '/run/ciwatch/0123abcd');
    assert.equal(calls[0]?.options.timeoutMs, 35_000);
    assert.equal(calls[0]?.options.env['ACTIONS_RUNTIME_TOKEN'], undefined, 'the runtime token never reaches the agent');
    assert.equal(calls[0]?.options.env['GITHUB_RUN_ID'], '1');
    assert.equal(state?.phase, 'started');
    assert.equal(state?.pid, 4242);
    assert.equal(state?.outDir, out);
    assert.equal(state?.artifactName, 'trace');
    assert.deepEqual(state?.failOn, ['lost-events']);
    assert.equal(state?.useSudo, false);
    assert.ok(existsSync(out));
    assert.deepEqual(JSON.parse(await readFile(join(temp, 'ciwatch', 'agent.json'), 'utf8')), { pid: 4242, out });
    assert.match(io.messages('warning').join('\n'), /hook file is not attached/);
    assert.equal(io.summaries.length, 0, 'a healthy start writes no summary');
  });

  it('uses sudo -n when the runner user is not root', async () => {
    const { calls, state } = await setup({}, { root: false });
    assert.equal(calls[0]?.file, 'sudo');
    assert.equal(calls[0]?.args[0], '-n');
    assert.match(calls[0]?.args[1] ?? '', /^--preserve-env=.*GITHUB_RUN_ID/);
    assert.ok(!(calls[0]?.args[1] ?? '').includes('ACTIONS_RUNTIME_TOKEN'));
    assert.equal(calls[0]?.args[2], '--');
    assert.equal(calls[0]?.args[4], 'start');
    assert.equal(state?.useSudo, true);
  });

  it('hands a PEM signing key to the agent on stdin, masked, and writes it nowhere', async () => {
    const pem = '-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----';
    const { io, calls, temp } = await setup({ sign: 'key', 'signing-key': pem });
    assert.ok(calls[0]?.args.includes('--sign-key-stdin'));
    assert.ok(!calls[0]?.args.includes('--signing-key'));
    assert.equal(calls[0]?.options.input, pem + '\n');
    assert.ok(io.secrets.includes(pem));
    assert.deepEqual(await readdir(join(temp, 'ciwatch')).then((names) => names.filter((n) => n !== 'bin' && n !== 'out' && n !== 'agent.json')), []);
  });

  it('gives start the OIDC request variables when signing may be keyless, and never the runtime token', async () => {
    const oidc = { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://oidc', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 't' };
    const auto = await setup({}, { env: oidc });
    assert.equal(auto.calls[0]?.options.env['ACTIONS_ID_TOKEN_REQUEST_TOKEN'], 't');
    assert.equal(auto.calls[0]?.options.env['ACTIONS_RUNTIME_TOKEN'], undefined);
    const none = await setup({ sign: 'none' }, { env: oidc });
    assert.equal(none.calls[0]?.options.env['ACTIONS_ID_TOKEN_REQUEST_TOKEN'], undefined);
  });

  it('asks start to disable sudo with disable-sudo', async () => {
    const { calls, state, io } = await setup({ 'disable-sudo': 'true' }, { root: false });
    assert.ok(calls[0]?.args.includes('--disable-sudo'));
    assert.equal(state?.disableSudo, true);
    assert.match(io.messages('info').join('\n'), /sudo is disabled for the rest of this job/);
  });

  it('refuses disable-sudo when the runner user is root', async () => {
    const { io, calls } = await setup({ 'disable-sudo': 'true' }, { root: true });
    assert.match(io.failed[0] ?? '', /Invalid input `disable-sudo`: the runner user is root/);
    assert.equal(calls.length, 0);
  });

  it('does not start when the root-owned copy cannot be installed', async () => {
    const { io, calls, state } = await setup({}, { install: async () => Promise.reject(new InstallError('cannot install the ciwatch binary as root (sudo: a password is required)')) });
    assert.equal(calls.length, 0);
    assert.match(io.messages('warning')[0] ?? '', /cannot install the ciwatch binary as root/);
    assert.equal(state?.phase, 'not-started');
  });

  it('treats exit 78 as a configuration error that fails the job', async () => {
    const { io, state } = await setup({}, { answer: () => ({ code: 78, stderr: 'ciwatch: error: policy.yml:3: unknown field `alow`' }) });
    assert.match(io.failed[0] ?? '', /rejected its configuration.*policy\.yml:3: unknown field/);
    assert.equal(state?.phase, 'not-started');
  });

  it('treats exit 71 (no BTF) as an unsupported runner', async () => {
    const { io, state } = await setup({}, { answer: () => ({ code: 71, stderr: 'no BTF' }) });
    assert.deepEqual(io.failed, []);
    assert.equal(state?.failure, 'unsupported');
  });

  it('treats exit 79 as an agent failure, failing only with fail-on agent-failure', async () => {
    const a = await setup({}, { answer: () => ({ code: 79 }) });
    assert.deepEqual(a.io.failed, []);
    assert.match(a.io.messages('warning')[0] ?? '', /required hook cannot be attached/);
    const b = await setup({ 'fail-on': 'agent-failure' }, { answer: () => ({ code: 79 }) });
    assert.match(b.io.failed[0] ?? '', /required hook cannot be attached/);
  });

  it('reports a start that never becomes ready', async () => {
    const { io, state } = await setup({ 'ready-timeout': '5' }, { answer: () => ({ code: null, signal: 'SIGTERM', timedOut: true }) });
    assert.match(io.messages('warning')[0] ?? '', /did not report readiness within 20 s/);
    assert.equal(state?.phase, 'not-started');
  });

  it('reports readiness output that breaks the contract', async () => {
    const { io, state } = await setup({}, { answer: () => ({ stdout: '{"pid": "x"}' }) });
    assert.match(io.messages('warning')[0] ?? '', /readiness output is unusable: .*\$\.pid/);
    assert.equal(state?.phase, 'not-started');
  });

  it('does not start a second agent in the same job', async () => {
    const temp = await mkdtemp(join(tmpdir(), 'ciwatch-pre-'));
    await mkdir(join(temp, 'ciwatch'), { recursive: true });
    await writeFile(join(temp, 'ciwatch', 'agent.json'), JSON.stringify({ pid: process.pid }));
    const { io, calls } = await setup({}, { env: { RUNNER_TEMP: temp } });
    assert.equal(calls.length, 0);
    assert.match(io.messages('warning')[0] ?? '', /already running in this job/);
  });
});
