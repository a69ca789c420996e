// THE FULL FLOW WITH THE REAL BINARY — WAITING FOR `ciwatch start` / `ciwatch finish`.
//
// Enable with:  CIWATCH_E2E_FULL=1 CIWATCH_BIN=/path/to/target/release/ciwatch  (as root, on a BTF kernel)
// Once enabled, a missing prerequisite (binary, root, BTF) FAILS the test; it never skips.
// Until then the test is reported as TODO with this reason.
//
// A process exec'd as `Runner.Worker` (a hard link to node) runs the job like the real runner: the real
// dist/pre, a node action step, a run step that fetches from 127.0.0.2, a step that reads a sensitive
// file, a step that resolves names, dist/main, then the real dist/post. The binary is served by the
// loopback release server and checked against its real SHA-256; the artifact goes to the fake Twirp
// service and Azurite; the OIDC endpoint is on loopback (CIWATCH_* variables reach the agent, so a
// loopback Fulcio/Rekor from the signing work can be configured through them).

import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { artifactFiles, downloadInputs, HARNESS, REPO, sha256, startServices, type Env } from './harness/fixture.ts';
import type { JobConfig, Step, StepResult } from './harness/runner.ts';

const ENABLED = process.env['CIWATCH_E2E_FULL'] === '1';
const WAITING =
  'waiting for `ciwatch start`/`ciwatch finish`: enable with CIWATCH_E2E_FULL=1 CIWATCH_BIN=<built ciwatch binary>';

function prerequisites(): string {
  const bin = process.env['CIWATCH_BIN'];
  if (!bin || !existsSync(bin)) throw new Error(`CIWATCH_E2E_FULL=1 but CIWATCH_BIN (${bin ?? 'unset'}) is not a file`);
  if (process.getuid?.() !== 0) throw new Error('the full flow runs as root (the agent loads BPF programs)');
  if (!existsSync('/sys/kernel/btf/vmlinux')) throw new Error('the full flow needs a kernel with BTF');
  return bin;
}

interface RunnerUser {
  name: string;
  uid: number;
  gid: number;
}

interface Outcome {
  results: StepResult[];
  byName: Map<string, StepResult>;
  root: string;
}

/** Runs the scenario in a child process named Runner.Worker, so the agent sees the runner's process tree. */
async function runAsWorker(job: JobConfig, steps: Step[]): Promise<Outcome> {
  const bin = join(job.root, 'runner', 'bin');
  mkdirSync(bin, { recursive: true });
  const worker = join(bin, 'Runner.Worker');
  try {
    linkSync(process.execPath, worker);
  } catch {
    copyFileSync(process.execPath, worker);
  }
  const scenario = join(job.root, 'scenario.json');
  const resultPath = join(job.root, 'result.json');
  writeFileSync(scenario, JSON.stringify({ job, steps }));
  const code = await new Promise<number | null>((resolve) => {
    const p = spawn(worker, ['--import', 'tsx', join(HARNESS, 'runner.ts'), scenario, resultPath], { cwd: join(REPO, 'action'), stdio: 'inherit', env: { ...process.env, CIWATCH_E2E_NODE: process.execPath } });
    p.on('exit', resolve);
  });
  assert.equal(code, 0, 'the Runner.Worker emulator completed');
  const { results } = JSON.parse(readFileSync(resultPath, 'utf8')) as { results: StepResult[] };
  return { results, byName: new Map(results.map((r) => [r.name, r])), root: job.root };
}

/** The loopback Fulcio + Rekor + token endpoint the Rust keyless tests use (tests/sigstore/mock-server.js). */
async function startSigstore(): Promise<{ proc: ChildProcess; info: Record<string, string> }> {
  const out = mkdtempSync(join(tmpdir(), 'ciwatch-sigstore-'));
  const modules = join(REPO, '.cache', 'peers', 'node', 'node_modules');
  if (!existsSync(join(modules, '@sigstore', 'mock'))) throw new Error(`${modules} lacks @sigstore/mock: run scripts/install-test-peers`);
  const proc = spawn(process.execPath, [join(REPO, 'tests', 'sigstore', 'mock-server.js'), out, '0'], {
    env: { ...process.env, NODE_PATH: modules },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      if (buf.includes('\n')) resolve(buf.slice(0, buf.indexOf('\n')));
    });
    proc.on('exit', (code) => reject(new Error(`the Sigstore mock exited with ${code}`)));
  });
  return { proc, info: JSON.parse(line) as Record<string, string> };
}

describe('full flow with the real ciwatch binary', { concurrency: false }, () => {
  if (!ENABLED) {
    it('observe job: pre, node action, fetch, sensitive read, name resolution, post; artifact, summary, outputs', { todo: WAITING }, () => {});
    it('agent killed mid-job: reported', { todo: WAITING }, () => {});
    it('a step without sudo plants files, symlinks and $GITHUB_ENV: the signed trace is still the agent\'s', { todo: WAITING }, () => {});
    it('disable-sudo: the runner user loses sudo, post still seals, the trace records it', { todo: WAITING }, () => {});
    return;
  }

  let env: Env;
  let sigstore: { proc: ChildProcess; info: Record<string, string> };
  let binary: Buffer;
  let http: Server;
  let httpPort = 0;
  before(async () => {
    binary = readFileSync(prerequisites());
    env = await startServices();
    env.gh.release = { binary };
    sigstore = await startSigstore();
    http = createServer((_req, res) => res.end('hello from 127.0.0.2\n'));
    await new Promise<void>((r) => http.listen(0, '127.0.0.2', () => r()));
    const a = http.address();
    httpPort = typeof a === 'object' && a ? a.port : 0;
  });
  // Each job's directory holds a copy of the release binary and the runner tree (~300 MB).
  const roots: string[] = [];
  const users: string[] = [];
  after(async () => {
    http?.close();
    sigstore?.proc.kill('SIGTERM');
    await env?.stop();
    for (const root of roots) rmSync(root, { recursive: true, force: true });
    // The throwaway users, their sudo grants, and the rule disable-sudo wrote, even after a failure.
    for (const name of users) {
      rmSync(`/etc/sudoers.d/${name}`, { force: true });
      spawnSync('userdel', [name]);
    }
    if (users.length > 0) rmSync('/etc/sudoers.d/zzzz-ciwatch', { force: true });
  });

  function jobConfig(inputs: Record<string, string>, user?: RunnerUser): JobConfig {
    const root = mkdtempSync(join(tmpdir(), 'ciwatch-full-'));
    roots.push(root);
    const home = join(root, 'home');
    mkdirSync(join(home, '.ssh'), { recursive: true });
    writeFileSync(join(home, '.ssh', 'id_ed25519'), '-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n', { mode: 0o600 });
    const passThrough = Object.fromEntries(Object.entries(process.env).filter(([k, v]) => k.startsWith('CIWATCH_') && k !== 'CIWATCH_BIN' && v !== undefined)) as Record<string, string>;
    // Keyless signing against the loopback Sigstore: its token endpoint stands in for the runner's.
    const keyless = {
      ACTIONS_ID_TOKEN_REQUEST_URL: sigstore.info['token_url']!,
      ACTIONS_ID_TOKEN_REQUEST_TOKEN: sigstore.info['request_token']!,
      CIWATCH_FULCIO_URL: sigstore.info['url']!,
      CIWATCH_REKOR_URL: sigstore.info['url']!,
      CIWATCH_SIGNING_TRUSTED_ROOT: sigstore.info['trusted_root']!,
    };
    const config: JobConfig = { actionDir: REPO, root, env: { ...env.gh.actionEnv(), ...passThrough, ...keyless, HOME: home }, inputs: { ...downloadInputs(env.gh, sha256(binary)), ...inputs } };
    if (user) {
      // The runner user owns its work tree, as on a real runner; the Worker emulator stays root.
      for (const d of [join(root, 'work', '_temp'), join(root, 'work', 'repo', 'repo'), join(root, 'runner', '_diag')]) mkdirSync(d, { recursive: true });
      chmodSync(root, 0o755);
      execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, home, join(root, 'work')]);
      config.user = { uid: user.uid, gid: user.gid, home };
    }
    return config;
  }

  const fetchScript = (): string => `exec 3<>/dev/tcp/127.0.0.2/${httpPort}\nprintf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3\ncat <&3\n`;

  it('observe job: pre, node action, fetch, sensitive read, name resolution, post; artifact, summary, outputs', async () => {
    const job = jobConfig({ 'artifact-name': 'full-observe' });
    const o = await runAsWorker(job, [
      { kind: 'action', stage: 'pre' },
      { kind: 'node', name: 'Node action', script: "import { execFileSync } from 'node:child_process';\nexecFileSync('/bin/true');\nconsole.log('node action ran');\n" },
      { kind: 'run', name: 'Fetch from loopback', script: fetchScript() },
      { kind: 'run', name: 'Read a sensitive file', script: 'cat "$HOME/.ssh/id_ed25519" > /dev/null\n' },
      { kind: 'run', name: 'Resolve names', script: "python3 -c \"import socket; socket.getaddrinfo('localhost', 443)\"\n" },
      { kind: 'action', stage: 'main' },
      { kind: 'action', stage: 'post' },
    ]);
    for (const r of o.results) assert.equal(r.exitCode, 0, `${r.name}: ${r.stdout}${r.stderr}`);
    const post = o.byName.get('Post Run ciwatch')!;
    assert.ok(!post.annotations.some((a) => a.level === 'error'), JSON.stringify(post.annotations));

    // Outputs.
    const outDir = join(o.root, 'work', '_temp', 'ciwatch', 'out');
    assert.equal(post.outputs['events-path'], join(outDir, 'events.ndjson'), post.stdout + post.stderr + JSON.stringify(post.annotations));
    assert.ok(Number(post.outputs['exec-count']) >= 3, readFileSync(join(outDir, 'agent.log'), 'utf8') + readFileSync(join(outDir, 'events.ndjson'), 'utf8').slice(0, 3000));
    assert.ok(Number(post.outputs['connect-count']) >= 1);
    assert.ok(Number(post.outputs['dns-count']) >= 1);
    assert.ok(Number(post.outputs['file-count']) >= 1);
    assert.equal(post.outputs['agent-died'], 'false');

    // The artifact, from Azurite.
    const record = env.gh.artifacts.find((a) => a.name === 'full-observe' && a.finalized);
    assert.ok(record, 'artifact finalized');
    const { files } = await artifactFiles(env.azurite, record);
    assert.ok(files.has('events.ndjson') && files.has('summary.md'));
    const events = files.get('events.ndjson')!.toString().trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    const stepOf = (e: Record<string, any>): string => e['step']?.name ?? '';
    assert.ok(events.some((e) => e['type'] === 'connect' && e['addr'] === '127.0.0.2' && e['port'] === httpPort && stepOf(e) === 'Fetch from loopback'), 'connect attributed to the fetch step');
    assert.ok(events.some((e) => e['type'] === 'file' && String(e['path']).endsWith('/.ssh/id_ed25519') && stepOf(e) === 'Read a sensitive file'), 'file open attributed');
    assert.ok(events.some((e) => e['type'] === 'dns' && e['host'] === 'localhost' && stepOf(e) === 'Resolve names'), 'DNS attributed');
    assert.ok(events.some((e) => e['type'] === 'exec' && stepOf(e) === 'Node action'), 'exec attributed to the node action');

    // Signed keyless: the downloaded bundle verifies with the command the post step prints.
    assert.equal(post.outputs['signing-method'], 'keyless', post.stdout);
    assert.ok(files.has('attestation.sigstore.json'));
    const dir = mkdtempSync(join(tmpdir(), 'ciwatch-verify-'));
    for (const [n, b] of files) writeFileSync(join(dir, n), b);
    const argv = (post.outputs['verify-command'] ?? '').split(/\s+/).filter(Boolean).map((a) => a.replaceAll(outDir, dir));
    assert.equal(argv[0], 'ciwatch');
    assert.ok(argv.includes(sigstore.info['san']!), `verify command pins the workflow identity: ${argv.join(' ')}`);
    const vcode = await new Promise<number | null>((resolve) => spawn(process.env['CIWATCH_BIN']!, argv.slice(1), { cwd: dir, stdio: 'inherit' }).on('exit', resolve));
    assert.equal(vcode, 0, 'the printed verify command accepts the downloaded artifact');

    // The summary: one row per step, with the counts in the right columns.
    const row = (name: string): number[] => {
      const line = post.summary.split('\n').find((l) => l.startsWith(`| ${name} |`));
      assert.ok(line, `summary row for ${name}:\n${post.summary}`);
      return line.split('|').slice(2, 6).map((c) => Number(c.trim()));
    };
    assert.ok(row('Fetch from loopback')[1]! >= 1, 'fetch: connects');
    assert.ok(row('Read a sensitive file')[3]! >= 1, 'sensitive read: opens');
    assert.ok(row('Resolve names')[2]! >= 1, 'resolve: DNS');
    assert.ok(row('Node action')[0]! >= 1, 'node action: execs');
    assert.ok(post.summary.includes(`| 127.0.0.2:${httpPort} | tcp |`), 'egress destination listed');
  });

  it('agent killed mid-job: reported', async () => {
    const job = jobConfig({ 'artifact-name': 'full-killed' });
    const marker = join(job.root, 'work', '_temp', 'ciwatch', 'agent.json');
    const o = await runAsWorker(job, [
      { kind: 'action', stage: 'pre' },
      { kind: 'run', name: 'Kill the agent', script: `kill -9 "$(python3 -c "import json; print(json.load(open('${marker}'))['pid'])")"\n` },
      { kind: 'run', name: 'After the kill', script: '/bin/true\n' },
      { kind: 'action', stage: 'post' },
    ]);
    const post = o.byName.get('Post Run ciwatch')!;
    assert.equal(post.exitCode, 0);
    assert.equal(post.outputs['agent-died'], 'true');
    assert.match(post.summary, /\*\*The ciwatch agent died during this job\.\*\*/);
    assert.ok(post.annotations.some((a) => a.level === 'error' && /agent died/.test(a.message)));
  });

  it('a step without sudo plants files, symlinks and $GITHUB_ENV: the signed trace is still the agent\'s', async () => {
    const user = runnerUser();
    const job = jobConfig({ 'artifact-name': 'full-planted' }, user);
    const ciwatch = join(job.root, 'work', '_temp', 'ciwatch');
    const out = join(ciwatch, 'out');
    // Root's files and process, which root writing or signalling on the job's say-so would hit.
    const victim = join(job.root, 'victim.txt');
    writeFileSync(victim, 'root-owned, untouched\n', { mode: 0o644 });
    const bystander = spawn('sleep', ['600'], { stdio: 'ignore' });
    const planted: Record<string, string> = {
      CIWATCH_SIGNING_KEY: join(job.root, 'home', 'attacker.pem'),
      CIWATCH_FULCIO_URL: 'http://127.0.0.1:9',
      CIWATCH_REKOR_URL: 'http://127.0.0.1:9',
      CIWATCH_SIGNING_TRUSTED_ROOT: join(job.root, 'home', 'attacker-root.json'),
      SIGSTORE_ID_TOKEN: 'attacker.jwt.token',
      // ALL_PROXY would carry finish's keyless signing (reqwest) to a dead port; the action's own
      // upload client reads only http(s)_proxy, which its Azurite over http does not use.
      HTTPS_PROXY: 'http://127.0.0.1:9',
      https_proxy: 'http://127.0.0.1:9',
      ALL_PROXY: 'http://127.0.0.1:9',
      SSL_CERT_FILE: '/dev/null',
    };
    const forged = JSON.stringify({ status: 'sealed', agent_died: false, events: join(out, 'events.ndjson'), summary: join(out, 'summary.md'), log_sha256: '0'.repeat(64), counts: {}, lost: 0, denied: 0, steps: [], egress: [], dns: [], files: [], signing: null });
    const plant = [
      'set -e',
      // The runner user owns out/: whatever root left there, it can remove and replace.
      `rm -f ${ciwatch}/post-done.json ${out}/agent.json ${out}/signing.json ${out}/agent.pid ${out}/events.ndjson.partial`,
      `printf '%s' '${JSON.stringify({ outputs: { 'agent-died': 'false', 'signing-method': 'key' }, failures: [] })}' > ${ciwatch}/post-done.json`,
      `printf '%s' '${forged}' > ${out}/agent.json`,
      `printf '%s' '${JSON.stringify({ sign: 'key', signing_key: planted.CIWATCH_SIGNING_KEY, fulcio_url: planted.CIWATCH_FULCIO_URL, rekor_url: planted.CIWATCH_REKOR_URL, trusted_root: null })}' > ${out}/signing.json`,
      `echo '${bystander.pid} 0' > ${out}/agent.pid`,
      `printf '{"type":"trace_start"}\\n' > ${out}/events.ndjson.partial`,
      `printf 'not a key' > ${planted.CIWATCH_SIGNING_KEY}`,
      `for f in events.ndjson summary.md attestation.intoto.jsonl attestation.sigstore.json agent.log .events.ndjson.partial .summary.md.partial; do ln -sf ${victim} ${out}/$f; done`,
      ...Object.entries(planted).map(([k, v]) => `echo '${k}=${v}' >> "$GITHUB_ENV"`),
      // The binary post runs is root's, and sudo -n is all a runner user has: neither works without sudo.
      `! cp /bin/true /run/ciwatch/bin/ 2>/dev/null`,
    ].join('\n');
    let o: Outcome;
    try {
      o = await runAsWorker(job, [
        { kind: 'action', stage: 'pre' },
        { kind: 'run', name: 'Plant', script: plant + '\n' },
        { kind: 'run', name: 'After planting', script: '/bin/true\n' },
        { kind: 'action', stage: 'post' },
      ]);
    } finally {
      assert.equal(bystander.exitCode, null, 'root never signalled the pid planted in out/agent.pid');
      bystander.kill('SIGKILL');
    }
    for (const r of o.results) assert.equal(r.exitCode, 0, `${r.name}: ${r.stdout}${r.stderr}`);
    const post = o.byName.get('Post Run ciwatch')!;
    assert.ok(!post.annotations.some((a) => a.level === 'error'), JSON.stringify(post.annotations) + post.stdout);
    assert.equal(readFileSync(victim, 'utf8'), 'root-owned, untouched\n', 'no root write followed a planted symlink');
    assert.equal(post.outputs['agent-died'], 'false');
    assert.equal(post.outputs['signing-method'], 'keyless', 'neither the planted signing.json nor $GITHUB_ENV picked the key or the endpoints');

    // The proxy variables do reach post's own upload client, which runs as the runner user: the upload is the
    // job's to break (docs/threat-model.md). The files finish published are what the upload would carry.
    assert.ok(post.annotations.some((a) => a.level === 'warning' && /artifact upload failed/.test(a.message)), 'post tried the upload');
    const files = new Map(['events.ndjson', 'summary.md', 'attestation.intoto.jsonl', 'attestation.sigstore.json'].map((n) => [n, readFileSync(join(out, n))]));
    const events = files.get('events.ndjson')!.toString().trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    assert.ok(events.some((e) => e['type'] === 'exec' && e['step']?.name === 'After planting'), 'the trace is the agent\'s, recorded past the planting step');
    assert.ok(!events.some((e) => JSON.stringify(e) === '{"type":"trace_start"}'), 'the planted partial log is not in the trace');
    await verifyArtifact(files, post, out);
  });

  it('disable-sudo: the runner user loses sudo, post still seals, the trace records it', async () => {
    const user = runnerUser();
    const job = jobConfig({ 'artifact-name': 'full-no-sudo', 'disable-sudo': 'true' }, user);
    const ciwatch = join(job.root, 'work', '_temp', 'ciwatch');
    // Only the post step holds the token: the one command sudo still allows cannot end the recording early.
    // sudo lets exactly one state directory's finish through, and that finish refuses the wrong token (77).
    const probe = [
      'if sudo -n true 2>/dev/null; then echo "sudo still works"; exit 1; fi',
      'if sudo -n -u nobody true 2>/dev/null; then echo "sudo as another user still works"; exit 1; fi',
      'refused=0',
      'for bin in /run/ciwatch/bin/ciwatch-*; do for d in /run/ciwatch/*/; do',
      '  d=${d%/}; case "${d##*/}" in bin|by-out) continue;; esac',
      '  rc=0; echo wrong | sudo -n "$bin" finish --state "$d" --json >/dev/null 2>&1 || rc=$?',
      '  if [ "$rc" -eq 0 ]; then echo "an early finish was accepted for $d"; exit 1; fi',
      '  if [ "$rc" -eq 77 ]; then refused=$((refused + 1)); fi',
      'done; done',
      'if [ "$refused" -ne 1 ]; then echo "expected one finish to refuse the token, got $refused"; exit 1; fi',
    ].join('\n');
    let o: Outcome;
    try {
      o = await runAsWorker(job, [
        { kind: 'action', stage: 'pre' },
        { kind: 'run', name: 'Try sudo', script: probe + '\n' },
        { kind: 'action', stage: 'post' },
      ]);
    } finally {
      // The user keeps no sudo after the job either: assert it before cleaning up.
      const after = spawnSync('runuser', ['-u', user.name, '--', 'sudo', '-n', 'true']);
      assert.notEqual(after.status, 0, 'sudo -n true still works for the runner user after the job');
    }
    const pre = o.byName.get('Pre Run ciwatch')!;
    assert.equal(pre.exitCode, 0, pre.stdout + pre.stderr);
    assert.match(pre.stdout, /sudo is disabled for the rest of this job/);
    for (const r of o.results) assert.equal(r.exitCode, 0, `${r.name}: ${r.stdout}${r.stderr}`);
    const post = o.byName.get('Post Run ciwatch')!;
    assert.equal(post.outputs['agent-died'], 'false', post.stdout);

    assert.equal(post.outputs['signing-method'], 'keyless', post.stdout);
    const record = env.gh.artifacts.find((a) => a.name === 'full-no-sudo' && a.finalized);
    assert.ok(record, 'post sealed and uploaded without sudo');
    const { files } = await artifactFiles(env.azurite, record);
    const first = JSON.parse(files.get('events.ndjson')!.toString().split('\n')[0]!) as Record<string, any>;
    assert.equal(first['sudo_disabled']?.['user'], user.name, JSON.stringify(first['sudo_disabled']));
    assert.ok((first['sudo_disabled']?.['neutralised'] as string[]).some((g) => /NOPASSWD: ALL/.test(g)), 'the NOPASSWD grant is recorded as neutralised');
    assert.match(first['sudo_disabled']?.['allowed'] ?? '', /^\/run\/ciwatch\/bin\/ciwatch-[0-9a-f]{64} finish --state \/run\/ciwatch\/[0-9a-f]{32} --json$/);
    const bundle = JSON.parse(files.get('attestation.sigstore.json')!.toString()) as { dsseEnvelope: { payload: string } };
    const statement = JSON.parse(Buffer.from(bundle.dsseEnvelope.payload, 'base64').toString()) as { predicate: { recording: { sudoDisabled?: { user: string } } } };
    assert.equal(statement.predicate.recording.sudoDisabled?.user, user.name, 'the signed predicate says sudo was off');
    await verifyArtifact(files, post, join(ciwatch, 'out'));
  });

  /** A throwaway runner user with passwordless sudo, as GitHub's `runner`; removed after the tests. */
  function runnerUser(): RunnerUser {
    const name = `cwrun${process.pid % 100000}${users.length}`;
    execFileSync('useradd', ['--no-create-home', '--shell', '/bin/bash', name]);
    users.push(name);
    writeFileSync(`/etc/sudoers.d/${name}`, `${name} ALL=(ALL) NOPASSWD:ALL\n`, { mode: 0o440 });
    const id = (flag: string): number => Number(execFileSync('id', [flag, name]).toString().trim());
    return { name, uid: id('-u'), gid: id('-g') };
  }

  /** The printed verify command accepts the downloaded artifact. */
  async function verifyArtifact(files: Map<string, Buffer>, post: StepResult, outDir: string): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'ciwatch-verify-'));
    for (const [n, b] of files) writeFileSync(join(dir, n), b);
    const argv = (post.outputs['verify-command'] ?? '').split(/\s+/).filter(Boolean).map((a) => a.replaceAll(outDir, dir));
    assert.ok(argv.includes(sigstore.info['san']!), `verify command pins the workflow identity: ${argv.join(' ')}`);
    const vcode = await new Promise<number | null>((resolve) => spawn(process.env['CIWATCH_BIN']!, argv.slice(1), { cwd: dir, stdio: 'inherit' }).on('exit', resolve));
    assert.equal(vcode, 0, 'the printed verify command accepts the downloaded artifact');
  }
});
