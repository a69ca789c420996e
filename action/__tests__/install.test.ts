import assert from 'node:assert/strict';
import { mkdtemp, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { installRootCopy, InstallError, rootBinaryPath, rootBinaryProblem } from '../src/install.ts';
import { fakeRunner } from './helpers.ts';

const SHA = 'a'.repeat(64);

describe('the root-owned binary', () => {
  it('is named by its digest under /run/ciwatch/bin', () => {
    assert.equal(rootBinaryPath(SHA.toUpperCase()), `/run/ciwatch/bin/ciwatch-${SHA}`);
  });

  it('refuses a binary in a directory other users can write, or behind a symlink', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ciwatch-install-'));
    const bin = join(dir, 'ciwatch');
    await writeFile(bin, '#!/bin/sh\n', { mode: 0o755 });
    assert.match((await rootBinaryProblem(bin, SHA)) ?? '', /writable by users other than root|not root/);
    const link = join(dir, 'link');
    await symlink(bin, link);
    assert.match((await rootBinaryProblem(link, SHA)) ?? '', /is a symlink/);
    assert.match((await rootBinaryProblem(join(dir, 'absent'), SHA)) ?? '', /is missing/);
  });

  it('is installed through sudo, and a copy it cannot verify is never moved into place', async () => {
    const { run, calls } = fakeRunner(() => ({}));
    await assert.rejects(installRootCopy('/t/_temp/ciwatch/bin/ciwatch', SHA, run, false), InstallError);
    const dest = rootBinaryPath(SHA);
    assert.deepEqual(
      calls.map((c) => [c.file, ...c.args]),
      [
        ['sudo', '-n', '--', 'install', '-d', '-o', 'root', '-g', 'root', '-m', '0755', '/run/ciwatch', '/run/ciwatch/bin'],
        ['sudo', '-n', '--', 'install', '-o', 'root', '-g', 'root', '-m', '0755', '/t/_temp/ciwatch/bin/ciwatch', `${dest}.partial`],
      ],
    );
  });

  it('reports a sudo that refuses', async () => {
    const { run } = fakeRunner(() => ({ code: 1, stderr: 'sudo: a password is required\n' }));
    await assert.rejects(installRootCopy('/t/ciwatch', SHA, run, false), /cannot install the ciwatch binary as root .*a password is required/);
  });
});
