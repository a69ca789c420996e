import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseEndpoint } from '../src/endpoints.ts';
import { InputError, keylessPermissionError, parseBinarySha256, parseFailOn, readInputs, splitList } from '../src/inputs.ts';

const get = (inputs: Record<string, string>) => (name: string) => inputs[name] ?? '';

function inputError(fn: () => unknown, input: string, fragment: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.equal(e.input, input);
    assert.match(e.message, new RegExp(`Invalid input \`${input}\``));
    assert.match(e.message, fragment);
    return true;
  });
}

describe('readInputs', () => {
  it('applies the documented defaults', () => {
    const i = readInputs(get({}));
    assert.equal(i.mode, 'observe');
    assert.equal(i.sign, 'auto');
    assert.equal(i.captureArgs, 'redacted');
    assert.equal(i.uploadArtifact, true);
    assert.equal(i.jobSummary, true);
    assert.deepEqual(i.failOn, ['denied']);
    assert.deepEqual(i.allowedEndpoints, []);
    assert.equal(i.readyTimeoutSeconds, 60);
    assert.equal(i.version, '');
    assert.equal(i.binaryUrl, null);
  });

  it('rejects an unknown mode, naming the input', () => {
    inputError(() => readInputs(get({ mode: 'block' })), 'mode', /"block" is not one of observe, learn, enforce/);
  });

  it('accepts mixed-case choices', () => {
    assert.equal(readInputs(get({ mode: 'Learn', 'capture-args': 'NONE' })).mode, 'learn');
  });

  it('reports every malformed endpoint in one error', () => {
    inputError(
      () => readInputs(get({ 'allowed-endpoints': 'github.com:443\nhttps://evil.example\n*.a.*.b\n300.1.1.1' })),
      'allowed-endpoints',
      /https:\/\/evil\.example.*without a scheme.*\*\.a\.\*\.b.*300\.1\.1\.1/s,
    );
  });

  it('normalises endpoints', () => {
    const i = readInputs(get({ 'allowed-endpoints': 'GitHub.com:443, *.NPMJS.org\n# a comment\n[2001:DB8::1]:443\n10.0.0.0/8' }));
    assert.deepEqual(i.allowedEndpoints, ['github.com:443', '*.npmjs.org', '[2001:db8::1]:443', '10.0.0.0/8']);
  });

  it('refuses enforce with nothing allowed', () => {
    inputError(() => readInputs(get({ mode: 'enforce' })), 'mode', /needs `allowed-endpoints` or `policy-file`/);
    assert.equal(readInputs(get({ mode: 'enforce', 'policy-file': 'p.yml' })).mode, 'enforce');
  });

  it('requires signing-key for sign: key', () => {
    inputError(() => readInputs(get({ sign: 'key' })), 'signing-key', /needs `signing-key`/);
  });

  it('checks booleans', () => {
    inputError(() => readInputs(get({ 'upload-artifact': 'maybe' })), 'upload-artifact', /not a boolean/);
    assert.equal(readInputs(get({ 'job-summary': 'False' })).jobSummary, false);
  });

  it('checks sensitive path patterns', () => {
    inputError(() => readInputs(get({ 'sensitive-paths': 'secrets/*.key' })), 'sensitive-paths', /absolute or start with/);
    assert.deepEqual(readInputs(get({ 'sensitive-paths': '/opt/a/*.key, **/.vault-token' })).sensitivePaths, ['/opt/a/*.key', '**/.vault-token']);
  });

  it('requires binary-sha256 with binary-url, and only then', () => {
    inputError(() => readInputs(get({ 'binary-url': 'https://example.com/ciwatch' })), 'binary-sha256', /only released versions have checksums pinned/);
    inputError(() => readInputs(get({ 'binary-sha256': 'a'.repeat(64) })), 'binary-sha256', /only used with `binary-url`/);
    inputError(() => readInputs(get({ 'binary-url': 'ftp://x/y', 'binary-sha256': 'a'.repeat(64) })), 'binary-url', /https:\/\//);
  });

  it('checks version and artifact name and ready-timeout', () => {
    inputError(() => readInputs(get({ version: 'latest' })), 'version', /not a release version/);
    assert.equal(readInputs(get({ version: 'v1.2.3' })).version, '1.2.3');
    inputError(() => readInputs(get({ 'artifact-name': 'a/b' })), 'artifact-name', /character/);
    inputError(() => readInputs(get({ 'ready-timeout': '0' })), 'ready-timeout', /1 to 600/);
  });
});

describe('fail-on', () => {
  it('is implied for agent failures and unsupported runners under enforce, whatever the input says', () => {
    const i = readInputs(get({ mode: 'enforce', 'allowed-endpoints': 'github.com:443', 'fail-on': 'none' }));
    assert.deepEqual(i.failOn, ['agent-failure', 'unsupported']);
    assert.deepEqual(readInputs(get({ 'fail-on': 'none' })).failOn, []);
  });

  it('parses lists, all and none', () => {
    assert.deepEqual(parseFailOn(''), ['denied']);
    assert.deepEqual(parseFailOn('none'), []);
    assert.deepEqual(parseFailOn('Lost-Events, agent-failure\ndenied'), ['lost-events', 'agent-failure', 'denied']);
    assert.equal(parseFailOn('all').length, 6);
    assert.throws(() => parseFailOn('denied, sometimes'), /"sometimes" is not one of denied, lost-events/);
    assert.throws(() => parseFailOn('none, denied'), /cannot be combined/);
  });
});

describe('binary-sha256', () => {
  it('takes one digest or per-arch digests', () => {
    const a = 'a'.repeat(64);
    const b = 'B'.repeat(64);
    assert.deepEqual(parseBinarySha256(a), { '*': a });
    assert.deepEqual(parseBinarySha256(`x86_64=${a}\naarch64: sha256:${b}`), { x86_64: a, aarch64: b.toLowerCase() });
    assert.throws(() => parseBinarySha256('abc'), /not a SHA-256/);
    assert.throws(() => parseBinarySha256(`riscv64=${a}`), /unknown architecture/);
  });
});

describe('splitList', () => {
  it('splits on newlines and commas, drops blanks and comments', () => {
    assert.deepEqual(splitList(' a,b \n\n# c\n d '), ['a', 'b', 'd']);
  });
});

describe('endpoint syntax', () => {
  const ok: [string, string, string][] = [
    ['example.com', 'host', 'example.com'],
    ['example.com:443', 'host', 'example.com:443'],
    ['localhost', 'host', 'localhost'],
    ['*.example.com:443', 'wildcard', '*.example.com:443'],
    ['192.0.2.10', 'ipv4', '192.0.2.10'],
    ['192.0.2.10:8080', 'ipv4', '192.0.2.10:8080'],
    ['2001:db8::1', 'ipv6', '2001:db8::1'],
    ['::1', 'ipv6', '::1'],
    ['[::1]:443', 'ipv6', '[::1]:443'],
    ['[2001:db8::1]', 'ipv6', '2001:db8::1'],
    ['10.0.0.0/8', 'cidr4', '10.0.0.0/8'],
    ['10.0.0.0/8:443', 'cidr4', '10.0.0.0/8:443'],
    ['2001:db8::/32', 'cidr6', '2001:db8::/32'],
    ['[2001:db8::/32]:443', 'cidr6', '[2001:db8::/32]:443'],
    ['example.com.', 'host', 'example.com'],
  ];
  for (const [text, kind, normalized] of ok) {
    it(`accepts ${text}`, () => {
      const e = parseEndpoint(text);
      assert.equal(e.kind, kind);
      assert.equal(e.normalized, normalized);
    });
  }
  const bad: [string, RegExp][] = [
    ['https://github.com', /without a scheme/],
    ['github.com/path', /not a valid host name|before the "\/"/],
    ['github.com:0', /out of range/],
    ['github.com:65536', /out of range/],
    ['github.com:https', /not a number/],
    ['github.com:0443', /not a number/],
    ['foo.*.com', /leftmost/],
    ['*.*.com', /only one leftmost/],
    ['*', /leftmost/],
    ['256.1.1.1', /not a valid IPv4/],
    ['1.2.3', /not a valid IPv4/],
    ['10.0.0.0/33', /prefix length/],
    ['10.0.0.0/', /prefix length/],
    ['[::1', /missing "\]"/],
    ['[::1]443', /only ":port"/],
    ['[10.0.0.1]:443', /not an IPv6/],
    ['2001:db8:::1', /not a valid IPv6/],
    ['-bad.example', /not a valid host/],
    ['user@host', /"@"/],
    ['a b', /space/],
    [':443', /missing host/],
  ];
  for (const [text, why] of bad) {
    it(`rejects ${JSON.stringify(text)}`, () => {
      assert.throws(() => parseEndpoint(text), why);
    });
  }
});

describe('keyless permission', () => {
  it('names the permission to add', () => {
    assert.match(keylessPermissionError({}) ?? '', /permissions: id-token: write/);
    assert.equal(keylessPermissionError({ ACTIONS_ID_TOKEN_REQUEST_URL: 'u', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 't' }), null);
  });
});
