import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { agentEnv, privileged, processAlive, runProcess } from '../src/proc.ts';

describe('runProcess', () => {
  it('captures stdout, stderr and the exit code, with arguments passed verbatim', async () => {
    const r = await runProcess(process.execPath, ['-e', 'console.log(process.argv[1]); console.error("e"); process.exit(3)', 'a b; $(rm -rf /)'], { env: process.env, timeoutMs: 10_000 });
    assert.equal(r.code, 3);
    assert.equal(r.stdout, 'a b; $(rm -rf /)\n');
    assert.equal(r.stderr, 'e\n');
    assert.equal(r.timedOut, false);
  });

  it('returns when the program exits even if a detached child keeps stdout open', async () => {
    // Like `ciwatch start`: print readiness, leave a daemon behind holding the inherited pipe.
    const script = `
      const { spawn } = require('node:child_process');
      const d = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { detached: true, stdio: ['ignore', 'inherit', 'inherit'] });
      d.unref();
      console.log(JSON.stringify({ pid: d.pid }));
    `;
    const t0 = Date.now();
    const r = await runProcess(process.execPath, ['-e', script], { env: process.env, timeoutMs: 20_000, drainMs: 300 });
    const elapsed = Date.now() - t0;
    assert.equal(r.code, 0);
    const pid = (JSON.parse(r.stdout.trim()) as { pid: number }).pid;
    assert.ok(elapsed < 5000, `took ${elapsed} ms`);
    process.kill(pid, 'SIGKILL');
  });

  it('kills a program that overruns its timeout', async () => {
    const r = await runProcess(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { env: process.env, timeoutMs: 300 });
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 'SIGTERM');
  });

  it('reports a program that cannot start', async () => {
    const r = await runProcess('/nonexistent/ciwatch', ['start'], { env: process.env, timeoutMs: 1000 });
    assert.match(r.spawnError ?? '', /ENOENT/);
  });
});

describe('privileged', () => {
  it('runs directly as root', () => {
    assert.deepEqual(privileged('/b/ciwatch', ['start'], { GITHUB_JOB: 'j' }, true), { file: '/b/ciwatch', args: ['start'] });
  });
  it('uses non-interactive sudo keeping the given variables (except PATH) otherwise', () => {
    const c = privileged('/b/ciwatch', ['finish', '--out', '/o'], { PATH: '/usr/bin', GITHUB_RUN_ID: '1', CIWATCH_X: 'y' }, false);
    assert.deepEqual(c, { file: 'sudo', args: ['-n', '--preserve-env=CIWATCH_X,GITHUB_RUN_ID', '--', '/b/ciwatch', 'finish', '--out', '/o'] });
  });
});

describe('agentEnv', () => {
  const env = {
    PATH: '/usr/bin',
    HOME: '/home/runner',
    GITHUB_RUN_ID: '1',
    GITHUB_TOKEN: 'ghs_secret',
    RUNNER_TRACKING_ID: 'github_x',
    ACTIONS_RUNTIME_TOKEN: 'jwt',
    ACTIONS_RESULTS_URL: 'https://results',
    ACTIONS_ID_TOKEN_REQUEST_URL: 'https://oidc',
    ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'jwt',
    INPUT_SIGNING_KEY: 'pem',
    STATE_ciwatch: '{}',
    MY_SECRET: 's',
    CIWATCH_FULCIO_URL: 'http://127.0.0.1:1',
  };
  it('keeps job identity and ciwatch settings, drops tokens, inputs, state and unrelated variables', () => {
    assert.deepEqual(Object.keys(agentEnv(env, { idToken: false })).sort(), ['CIWATCH_FULCIO_URL', 'GITHUB_RUN_ID', 'HOME', 'PATH', 'RUNNER_TRACKING_ID']);
  });
  it('adds the OIDC request variables only when asked', () => {
    const e = agentEnv(env, { idToken: true });
    assert.equal(e['ACTIONS_ID_TOKEN_REQUEST_URL'], 'https://oidc');
    assert.equal(e['ACTIONS_RUNTIME_TOKEN'], undefined);
  });
});

describe('processAlive', () => {
  it('tells a live pid from a dead one', () => {
    assert.equal(processAlive(process.pid), true);
    assert.equal(processAlive(2 ** 22 + 12345), false);
  });
});

describe('processAlive and zombies', () => {
  it('treats an unreaped (zombie) process as dead', async () => {
    // The parent forks a child that exits at once and is never waited for: a zombie for 3 s.
    const code = 'import os, sys, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(3)\n';
    const { spawn } = await import('node:child_process');
    const parent = spawn('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = await new Promise<number>((resolve) => parent.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
    await new Promise((r) => setTimeout(r, 200));
    let signalled = true;
    try {
      process.kill(pid, 0);
    } catch {
      signalled = false;
    }
    assert.equal(signalled, true, 'signal 0 still reaches a zombie');
    assert.equal(processAlive(pid), false);
    parent.kill('SIGKILL');
  });
});
