// Picks the ciwatch binary for this runner, downloads it with retries and checks its SHA-256 against a
// digest that never comes from the same place as the download: the table pinned in checksums.ts, or the
// `binary-sha256` input for a custom URL.

import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, copyFile, mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { HttpClient } from '@actions/http-client';
import { assetName, CHECKSUMS, defaultVersion, RELEASE_BASE_URL, type Arch } from './checksums.ts';
import type { Inputs } from './inputs.ts';

export interface BinarySource {
  url: string;
  sha256: string;
  /** the release version, or `custom` for a `binary-url` */
  version: string;
  arch: Arch;
}

export class BinarySourceError extends Error {
  constructor(
    readonly input: string,
    message: string,
  ) {
    super(message);
    this.name = 'BinarySourceError';
  }
}

export class ChecksumMismatchError extends Error {
  constructor(
    readonly url: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`SHA-256 mismatch for ${url}: expected ${expected}, got ${actual}`);
    this.name = 'ChecksumMismatchError';
  }
}

export class DownloadError extends Error {
  constructor(
    message: string,
    readonly attempts: number,
  ) {
    super(message);
    this.name = 'DownloadError';
  }
}

export function resolveBinarySource(
  inputs: Pick<Inputs, 'version' | 'binaryUrl' | 'binarySha256'>,
  arch: Arch,
  table = CHECKSUMS,
): BinarySource {
  if (inputs.binaryUrl) {
    const sha256 = inputs.binarySha256[arch] ?? inputs.binarySha256['*'];
    if (!sha256) throw new BinarySourceError('binary-sha256', `\`binary-sha256\` has no digest for ${arch}`);
    const version = inputs.version || 'custom';
    const url = inputs.binaryUrl
      .replaceAll('{version}', inputs.version)
      .replaceAll('{arch}', arch)
      .replaceAll('{asset}', assetName(arch));
    return { url, sha256, version, arch };
  }
  const version = inputs.version || defaultVersion(table);
  if (!version) {
    throw new BinarySourceError(
      'version',
      'this build of the action pins no released ciwatch version; use a released tag of the action (such as @v1), or set `binary-url` and `binary-sha256`',
    );
  }
  const pinned = table[version];
  if (!pinned) {
    throw new BinarySourceError(
      'version',
      `ciwatch ${version} has no checksum pinned in this action (pinned: ${Object.keys(table).join(', ') || 'none'}); update the action, or set \`binary-url\` and \`binary-sha256\``,
    );
  }
  const sha256 = pinned[arch];
  if (!sha256) throw new BinarySourceError('version', `ciwatch ${version} has no ${arch} build`);
  return { url: `${RELEASE_BASE_URL}/v${version}/${assetName(arch)}`, sha256, version, arch };
}

/** One HTTP GET: status and a body stream. Injected in tests. */
export type Fetcher = (url: string) => Promise<{ status: number; body: Readable }>;

const httpFetcher: Fetcher = async (url) => {
  // @actions/http-client follows the redirects of release downloads and honours the runner's proxy settings.
  const client = new HttpClient('ciwatch-action', [], { allowRedirects: true, maxRedirects: 10, socketTimeout: 120_000 });
  const res = await client.get(url);
  return { status: res.message.statusCode ?? 0, body: res.message };
};

export interface DownloadOptions {
  attempts?: number;
  baseDelayMs?: number;
  fetcher?: Fetcher;
  sleep?: (ms: number) => Promise<void>;
  log?: (message: string) => void;
}

function retryable(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** Downloads `url` to `dest` (via a temporary file), retrying network errors, 408, 429 and 5xx. */
export async function download(url: string, dest: string, options: DownloadOptions = {}): Promise<void> {
  const attempts = options.attempts ?? 4;
  const baseDelayMs = options.baseDelayMs ?? 2000;
  const fetcher = options.fetcher ?? httpFetcher;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  await mkdir(dirname(dest), { recursive: true });
  const partial = `${dest}.download`;

  if (url.startsWith('file://')) {
    await copyFile(fileURLToPath(url), partial);
    await rename(partial, dest);
    return;
  }

  let lastError = '';
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      const res = await fetcher(url);
      if (res.status >= 200 && res.status < 300) {
        await pipeline(res.body, createWriteStream(partial, { mode: 0o600 }));
        await rename(partial, dest);
        return;
      }
      res.body.resume();
      lastError = `HTTP ${res.status}`;
      if (!retryable(res.status)) throw new DownloadError(`downloading ${url} failed: ${lastError}`, attempt);
    } catch (e) {
      if (e instanceof DownloadError) throw e;
      lastError = e instanceof Error ? e.message : String(e);
    }
    await rm(partial, { force: true });
    if (attempt < attempts) {
      const delay = baseDelayMs * 2 ** (attempt - 1);
      options.log?.(`Download attempt ${attempt} of ${attempts} failed (${lastError}); retrying in ${delay} ms`);
      await sleep(delay);
    }
  }
  throw new DownloadError(`downloading ${url} failed after ${attempts} attempts: ${lastError}`, attempts);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** Checks the file's digest; on a mismatch the file is deleted so nothing can run it. */
export async function verifySha256(path: string, expected: string, url: string): Promise<void> {
  const actual = await sha256File(path);
  if (actual !== expected.toLowerCase()) {
    await rm(path, { force: true });
    throw new ChecksumMismatchError(url, expected.toLowerCase(), actual);
  }
}

/** Download, verify, make executable. */
export async function installBinary(source: BinarySource, dest: string, options: DownloadOptions = {}): Promise<void> {
  await download(source.url, dest, options);
  await verifySha256(dest, source.sha256, source.url);
  await chmod(dest, 0o755);
}

