// Shared set-up of the end-to-end tests: Azurite + the fake GitHub services, a scratch job, the action
// inputs that point the download at the loopback release server, and artifact retrieval from Azurite.

import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import AdmZip from 'adm-zip';
import { Job } from './runner.ts';
import { Azurite, FakeGitHub, type ArtifactRecord } from './services.ts';

export const HARNESS = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HARNESS, '..', '..', '..', '..');
export const STUB_PATH = join(HARNESS, 'fake-ciwatch.mjs');
export const STUB = readFileSync(STUB_PATH);
export const PLATFORM_PRELOAD = join(HARNESS, 'fake-platform.mjs');

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

export interface Env {
  azurite: Azurite;
  gh: FakeGitHub;
  stop(): Promise<void>;
}

export async function startServices(): Promise<Env> {
  const azurite = await Azurite.start();
  const gh = new FakeGitHub({ azurite });
  await gh.start();
  return {
    azurite,
    gh,
    stop: async () => {
      await gh.stop();
      await azurite.stop();
    },
  };
}

/** Inputs that make pre download `binary` from the loopback release server, checked against `sha`. */
export function downloadInputs(gh: FakeGitHub, sha: string, version = '0.0.0-test'): Record<string, string> {
  return {
    version,
    'binary-url': `${gh.origin}/releases/download/v{version}/{asset}`,
    'binary-sha256': sha,
  };
}

export function newJob(gh: FakeGitHub, inputs: Record<string, string>, env: Record<string, string> = {}): Job {
  const root = mkdtempSync(join(tmpdir(), 'ciwatch-e2e-'));
  return new Job({ actionDir: REPO, root, env: { ...gh.actionEnv(), ...env }, inputs });
}

/** The files inside an uploaded artifact, read back from Azurite. */
export async function artifactFiles(azurite: Azurite, record: ArtifactRecord): Promise<{ zip: Buffer; files: Map<string, Buffer> }> {
  const zip = await azurite.download(record.blobName);
  const files = new Map<string, Buffer>();
  for (const e of new AdmZip(zip).getEntries()) if (!e.isDirectory) files.set(e.entryName, e.getData());
  return { zip, files };
}
