import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { describe, it } from 'node:test';
import {
  BinarySourceError,
  ChecksumMismatchError,
  download,
  DownloadError,
  installBinary,
  resolveBinarySource,
  verifySha256,
  type Fetcher,
} from '../src/binary.ts';
import { CHECKSUMS, defaultVersion } from '../src/checksums.ts';

const sha = (b: string | Buffer) => createHash('sha256').update(b).digest('hex');
const tmp = () => mkdtemp(join(tmpdir(), 'ciwatch-bin-'));

const TABLE = {
  '0.1.0': { x86_64: 'a'.repeat(64), aarch64: 'b'.repeat(64) },
  '0.2.0': { x86_64: 'c'.repeat(64) },
  '0.10.0-rc.1': { x86_64: 'd'.repeat(64) },
};

describe('checksum table', () => {
  it('is well formed: versions map architectures to SHA-256 hex digests', () => {
    for (const [version, arches] of Object.entries(CHECKSUMS)) {
      assert.match(version, /^\d+\.\d+\.\d+/);
      for (const [arch, digest] of Object.entries(arches)) {
        assert.ok(arch === 'x86_64' || arch === 'aarch64', arch);
        assert.match(digest ?? '', /^[0-9a-f]{64}$/);
      }
    }
  });
  it('defaults to the newest stable version (numeric order)', () => {
    assert.equal(defaultVersion(TABLE), '0.2.0');
    assert.equal(defaultVersion({ '0.9.0': {}, '0.10.0': {} }), '0.10.0');
    assert.equal(defaultVersion({}), null);
  });
});

describe('resolveBinarySource', () => {
  const none = { version: '', binaryUrl: null, binarySha256: {} };
  it('uses the pinned digest and release URL for the runner arch', () => {
    const s = resolveBinarySource({ ...none, version: '0.1.0' }, 'aarch64', TABLE);
    assert.equal(s.sha256, 'b'.repeat(64));
    assert.equal(s.url, 'https://github.com/ciwatch/ciwatch/releases/download/v0.1.0/ciwatch-aarch64-unknown-linux-musl');
    assert.equal(resolveBinarySource(none, 'x86_64', TABLE).version, '0.2.0');
  });
  it('refuses versions without a pin, and arches without a build', () => {
    assert.throws(() => resolveBinarySource({ ...none, version: '9.9.9' }, 'x86_64', TABLE), (e: unknown) => e instanceof BinarySourceError && e.input === 'version' && /9\.9\.9 has no checksum pinned/.test(e.message));
    assert.throws(() => resolveBinarySource({ ...none, version: '0.2.0' }, 'aarch64', TABLE), /no aarch64 build/);
    assert.throws(() => resolveBinarySource(none, 'x86_64', {}), /pins no released ciwatch version/);
  });
  it('takes a custom URL only with its own digest, expanding placeholders', () => {
    const s = resolveBinarySource(
      { version: '1.0.0', binaryUrl: 'https://mirror.example/{version}/{asset}?a={arch}', binarySha256: { aarch64: 'e'.repeat(64) } },
      'aarch64',
      TABLE,
    );
    assert.equal(s.url, 'https://mirror.example/1.0.0/ciwatch-aarch64-unknown-linux-musl?a=aarch64');
    assert.equal(s.sha256, 'e'.repeat(64));
    assert.throws(() => resolveBinarySource({ version: '', binaryUrl: 'https://x/y', binarySha256: { aarch64: 'e'.repeat(64) } }, 'x86_64', TABLE), /no digest for x86_64/);
  });
});

function scripted(responses: ({ status: number; body?: string } | Error)[]): { fetcher: Fetcher; urls: string[] } {
  const urls: string[] = [];
  const fetcher: Fetcher = async (url) => {
    urls.push(url);
    const r = responses.shift();
    if (!r) throw new Error('no more responses');
    if (r instanceof Error) throw r;
    return { status: r.status, body: Readable.from([Buffer.from(r.body ?? '')]) };
  };
  return { fetcher, urls };
}

describe('download', () => {
  it('retries network errors and 5xx, then succeeds', async () => {
    const dir = await tmp();
    const { fetcher, urls } = scripted([new Error('ECONNRESET'), { status: 503 }, { status: 200, body: 'BINARY' }]);
    const delays: number[] = [];
    const logs: string[] = [];
    await download('https://x/ciwatch', join(dir, 'ciwatch'), { fetcher, sleep: async (ms) => void delays.push(ms), baseDelayMs: 100, log: (m) => logs.push(m) });
    assert.equal(await readFile(join(dir, 'ciwatch'), 'utf8'), 'BINARY');
    assert.equal(urls.length, 3);
    assert.deepEqual(delays, [100, 200]);
    assert.match(logs[0] ?? '', /attempt 1 of 4 failed \(ECONNRESET\)/);
    assert.ok(!existsSync(join(dir, 'ciwatch.download')));
  });
  it('does not retry a 404', async () => {
    const dir = await tmp();
    const { fetcher, urls } = scripted([{ status: 404 }, { status: 200, body: 'x' }]);
    await assert.rejects(download('https://x/y', join(dir, 'b'), { fetcher, sleep: async () => {} }), (e: unknown) => e instanceof DownloadError && /HTTP 404/.test(e.message));
    assert.equal(urls.length, 1);
  });
  it('gives up after the last attempt', async () => {
    const dir = await tmp();
    const { fetcher, urls } = scripted([{ status: 500 }, { status: 502 }, { status: 429 }]);
    await assert.rejects(download('https://x/y', join(dir, 'b'), { fetcher, attempts: 3, sleep: async () => {} }), /after 3 attempts: HTTP 429/);
    assert.equal(urls.length, 3);
    assert.ok(!existsSync(join(dir, 'b')));
  });
  it('copies file:// URLs', async () => {
    const dir = await tmp();
    await writeFile(join(dir, 'src'), 'LOCAL');
    await download(pathToFileURL(join(dir, 'src')).href, join(dir, 'dst'));
    assert.equal(await readFile(join(dir, 'dst'), 'utf8'), 'LOCAL');
  });
});

describe('checksum verification', () => {
  it('accepts a matching digest (any case) and makes the binary executable', async () => {
    const dir = await tmp();
    const { fetcher } = scripted([{ status: 200, body: 'good binary' }]);
    const dest = join(dir, 'bin', 'ciwatch');
    await installBinary({ url: 'https://x/c', sha256: sha('good binary').toUpperCase(), version: '0.1.0', arch: 'x86_64' }, dest, { fetcher });
    assert.equal((await stat(dest)).mode & 0o777, 0o755);
  });
  it('refuses a mismatch and deletes the file', async () => {
    const dir = await tmp();
    const { fetcher } = scripted([{ status: 200, body: 'tampered binary' }]);
    const dest = join(dir, 'ciwatch');
    await assert.rejects(
      installBinary({ url: 'https://x/c', sha256: sha('good binary'), version: '0.1.0', arch: 'x86_64' }, dest, { fetcher }),
      (e: unknown) => e instanceof ChecksumMismatchError && e.expected === sha('good binary') && e.actual === sha('tampered binary'),
    );
    assert.ok(!existsSync(dest), 'a refused binary must not stay on disk');
  });
  it('verifySha256 compares the whole file', async () => {
    const dir = await tmp();
    await writeFile(join(dir, 'f'), 'abc');
    await verifySha256(join(dir, 'f'), sha('abc'), 'u');
    await assert.rejects(verifySha256(join(dir, 'f'), sha('abd'), 'u'), ChecksumMismatchError);
  });
});
