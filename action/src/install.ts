// The binary that runs as root must be one the job cannot replace. The download lands in $RUNNER_TEMP, which
// every step can write; pre copies it, as root, to /run/ciwatch/bin/ciwatch-<sha256> (root's, 0755, in
// directories only root can write), checks the copy's digest, and starts the agent from there. post checks
// all of that, and the digest, again before it runs `finish` from the same path.

import { lstat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { sha256File } from './binary.ts';
import { privileged, type ProcessRunner } from './proc.ts';

export const ROOT_DIR = '/run/ciwatch';
export const ROOT_BIN_DIR = join(ROOT_DIR, 'bin');

export class InstallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InstallError';
  }
}

export function rootBinaryPath(sha256: string): string {
  return join(ROOT_BIN_DIR, `ciwatch-${sha256.toLowerCase()}`);
}

/** Why `path` is not a file only root can have written with this digest, or null when it is. */
export async function rootBinaryProblem(path: string, sha256: string): Promise<string | null> {
  for (let p = path; ; p = dirname(p)) {
    let st;
    try {
      st = await lstat(p);
    } catch (e) {
      return `${p} is missing (${(e as NodeJS.ErrnoException).code ?? 'error'})`;
    }
    if (st.isSymbolicLink()) return `${p} is a symlink`;
    if (st.uid !== 0) return `${p} is owned by uid ${st.uid}, not root`;
    if ((st.mode & 0o022) !== 0) return `${p} is writable by users other than root`;
    if (p === dirname(p)) break;
  }
  const actual = await sha256File(path);
  if (actual !== sha256.toLowerCase()) return `its SHA-256 is ${actual}, not the pinned ${sha256.toLowerCase()}`;
  return null;
}

/**
 * Installs the verified download `src` as the root-owned copy (through `sudo -n` unless already root) and
 * returns its path. An existing copy that passes the checks is kept.
 */
export async function installRootCopy(src: string, sha256: string, run: ProcessRunner, isRoot: boolean): Promise<string> {
  const dest = rootBinaryPath(sha256);
  if ((await rootBinaryProblem(dest, sha256)) === null) return dest;
  const partial = `${dest}.partial`;
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
  const step = async (file: string, args: string[]): Promise<void> => {
    const cmd = privileged(file, args, {}, isRoot);
    const res = await run(cmd.file, cmd.args, { env, timeoutMs: 60_000 });
    if (res.spawnError || res.timedOut || res.code !== 0) {
      const why = res.spawnError ?? (res.timedOut ? 'timed out' : `exited with ${res.code ?? res.signal}: ${res.stderr.trim().slice(0, 500)}`);
      throw new InstallError(`cannot install the ciwatch binary as root (${[cmd.file, ...cmd.args].join(' ')}: ${why})`);
    }
  };
  await step('install', ['-d', '-o', 'root', '-g', 'root', '-m', '0755', ROOT_DIR, ROOT_BIN_DIR]);
  await step('install', ['-o', 'root', '-g', 'root', '-m', '0755', src, partial]);
  // The copy is root's now, so no step can change it between this check and its use.
  const problem = await rootBinaryProblem(partial, sha256);
  if (problem) throw new InstallError(`the root-owned copy of the ciwatch binary is not the verified download: ${problem}`);
  await step('mv', ['-f', '-T', partial, dest]);
  return dest;
}
