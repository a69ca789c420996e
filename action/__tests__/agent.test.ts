import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { classifyStartFailure, ContractError, finishArgs, parseFinishOutput, parseStartOutput, startArgs } from '../src/agent.ts';
import { finishResult } from './helpers.ts';

describe('start contract', () => {
  it('builds the argv with repeated flags, never a shell string', () => {
    const args = startArgs({
      outDir: '/t/out dir',
      mode: 'enforce',
      policyFile: '/w/policy.yml',
      allow: ['github.com:443', '[::1]:8080'],
      captureArgs: 'none',
      sensitivePaths: ['/a/*', '**/.x'],
      sign: 'key',
      signingKeyPath: '/k.pem',
      signKeyStdin: false,
      finishTokenSha256: 'f'.repeat(64),
      disableSudo: true,
      readyTimeoutSeconds: 30,
    });
    assert.deepEqual(args, [
      'start', '--out', '/t/out dir', '--mode', 'enforce', '--policy', '/w/policy.yml',
      '--allow', 'github.com:443', '--allow', '[::1]:8080', '--capture-args', 'none',
      '--sensitive-path', '/a/*', '--sensitive-path', '**/.x', '--sign', 'key', '--signing-key', '/k.pem',
      '--finish-token-sha256', 'f'.repeat(64), '--disable-sudo', '--ready-timeout', '30',
    ]);
    assert.deepEqual(finishArgs('/run/ciwatch/k'), ['finish', '--state', '/run/ciwatch/k', '--json']);
  });

  it('parses the readiness line, even after log lines', () => {
    const out = 'note: something\n{"pid": 42, "out": "/o", "state": "/run/ciwatch/k", "hooks": [{"hook": "exec", "implementation": "tracepoint/sched/sched_process_exec", "attached": true, "extra": 1}]}\n';
    const r = parseStartOutput(out);
    assert.equal(r.pid, 42);
    assert.equal(r.hooks[0]?.implementation, 'tracepoint/sched/sched_process_exec');
  });

  it('names the field that breaks the contract', () => {
    assert.throws(() => parseStartOutput('{"pid": "42", "out": "/o", "state": "/s", "hooks": []}'), (e: unknown) => e instanceof ContractError && /\$\.pid: expected a non-negative integer/.test(e.message));
    assert.throws(() => parseStartOutput('{"pid": 1, "out": "/o", "state": "/s", "hooks": [{"hook": "x", "implementation": "y"}]}'), /\$\.hooks\[0\]\.attached: expected a boolean, got undefined/);
    assert.throws(() => parseStartOutput('started\n'), /printed no JSON object/);
  });

  it('explains exit codes', () => {
    assert.equal(classifyStartFailure(71).kind, 'unsupported');
    assert.equal(classifyStartFailure(78).kind, 'config');
    assert.match(classifyStartFailure(77).explanation, /privileges/);
    assert.match(classifyStartFailure(79).explanation, /cannot be attached/);
    assert.match(classifyStartFailure(3).explanation, /exited with code 3/);
  });
});

describe('finish contract', () => {
  it('round-trips a complete result and keeps unknown fields', () => {
    const r = finishResult('/o');
    const parsed = parseFinishOutput(JSON.stringify({ ...r, future_field: true }));
    assert.deepEqual({ ...parsed, future_field: undefined }, { ...r, future_field: undefined });
  });
  it('accepts null envelope/bundle and an unsigned result', () => {
    const r = finishResult('/o', { envelope: null, bundle: null, signing: { method: 'none', fallback: 'no key', identity: '', verify_command: '' } });
    assert.equal(parseFinishOutput(JSON.stringify(r)).signing.method, 'none');
  });
  it('rejects a wrong signing method, a bad port, a missing list', () => {
    const r = finishResult('/o');
    assert.throws(() => parseFinishOutput(JSON.stringify({ ...r, signing: { ...r.signing, method: 'gpg' } })), /\$\.signing\.method: expected one of keyless, key, none/);
    assert.throws(() => parseFinishOutput(JSON.stringify({ ...r, egress: [{ ...r.egress[0], port: 70000 }] })), /\$\.egress\[0\]\.port/);
    const { dns: _dns, ...noDns } = r;
    assert.throws(() => parseFinishOutput(JSON.stringify(noDns)), /\$\.dns: expected an array/);
  });
});
