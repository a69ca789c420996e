// A GitHub Actions runner, emulated closely enough to run the real dist/ entry points and ordinary steps:
//  - one fresh GUID per step execution, with the file-command files the real runner creates under
//    $RUNNER_TEMP/_runner_file_commands (set_output_, save_state_, step_summary_, set_env_, add_path_);
//  - INPUT_<NAME> for action inputs (upper-cased, spaces to underscores, hyphens kept), STATE_<name> from
//    the pre step's saved state for main and post, GITHUB_ACTION per step, RUNNER_TRACKING_ID per job;
//  - run steps as `bash -e $RUNNER_TEMP/<guid>.sh` (the runner's default shell), node actions as
//    `node <script>`, both direct children of this process;
//  - `_diag/Worker_*.log` lines in the runner's format (Processing step / Process started with process id);
//  - $GITHUB_ENV applied to every later step, NODE_OPTIONS refused, with an action's INPUT_*, STATE_* and the
//    runner's own ACTIONS_* service variables set over it (ActionRunner.cs, NodeScriptActionHandler.cs);
//  - with `user`, every step runs as that uid/gid, as a runner user would.
// When this file is the main module of a process named `Runner.Worker` it runs a JSON scenario, so that
// the agent sees the real process layout (see full-flow.test.ts).

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// The real runner execs actions with its bundled `node`, never with itself: when this emulator runs as a
// `Runner.Worker` hard link, steps must still run as `node` or the agent would see them as the runner.
const NODE = process.env['CIWATCH_E2E_NODE'] ?? process.execPath;

export interface Annotation {
  level: 'warning' | 'error' | 'notice' | 'debug';
  message: string;
}

export interface StepResult {
  name: string;
  githubAction: string;
  guid: string;
  pid: number | null;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  outputs: Record<string, string>;
  state: Record<string, string>;
  summary: string;
  annotations: Annotation[];
  masks: string[];
}

export type Step =
  | { kind: 'action'; stage: 'pre' | 'main' | 'post'; name?: string; inputs?: Record<string, string>; nodeArgs?: string[]; env?: Record<string, string> }
  | { kind: 'run'; name: string; script: string; env?: Record<string, string> }
  | { kind: 'node'; name: string; script: string; env?: Record<string, string> };

export interface JobConfig {
  /** repository root holding action.yml and dist/ */
  actionDir: string;
  /** scratch directory: runner root, work dir, temp */
  root: string;
  /** job-wide environment (ACTIONS_*, GITHUB_* overrides); merged over the defaults */
  env: Record<string, string>;
  inputs: Record<string, string>;
  /** GITHUB_ACTION of the action's steps */
  actionId?: string;
  /** run every step as this user (the runner user); default: as this process */
  user?: { uid: number; gid: number; home: string };
}

export class Job {
  readonly runnerRoot: string;
  readonly workspace: string;
  readonly temp: string;
  readonly trackingId = `github_${randomUUID()}`;
  readonly diagLog: string;
  /** held open for the Worker's life, as the real Worker does: ciwatch reads only the log it holds open */
  private readonly diagFd: number;
  /** saved state of the action (from its pre step), handed to main and post as STATE_* */
  actionState: Record<string, string> = {};
  readonly results: StepResult[] = [];
  /** what steps wrote to $GITHUB_ENV */
  readonly stepEnv: Record<string, string> = {};
  private runCount = 0;

  constructor(readonly config: JobConfig) {
    this.runnerRoot = join(config.root, 'runner');
    this.workspace = join(config.root, 'work', 'repo', 'repo');
    this.temp = join(config.root, 'work', '_temp');
    for (const d of [join(this.runnerRoot, '_diag'), this.workspace, join(this.temp, '_runner_file_commands')]) mkdirSync(d, { recursive: true });
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
    this.diagLog = join(this.runnerRoot, '_diag', `Worker_${stamp}-utc.log`);
    this.diagFd = openSync(this.diagLog, 'a');
    this.diag('Worker', 'Job ID ' + (config.env['GITHUB_JOB'] ?? 'build'));
  }

  private diag(source: string, message: string): void {
    const t = new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    writeSync(this.diagFd, `[${t} INFO ${source}] ${message}\n`);
  }

  baseEnv(): Record<string, string> {
    return {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      HOME: process.env['HOME'] ?? '/root',
      LANG: 'C.UTF-8',
      CI: 'true',
      GITHUB_ACTIONS: 'true',
      GITHUB_JOB: 'build',
      GITHUB_RUN_ID: '1000',
      GITHUB_RUN_NUMBER: '1',
      GITHUB_RUN_ATTEMPT: '1',
      GITHUB_REPOSITORY: 'octo/demo',
      GITHUB_REPOSITORY_OWNER: 'octo',
      GITHUB_SERVER_URL: 'https://github.com',
      GITHUB_API_URL: 'https://api.github.com',
      GITHUB_WORKFLOW: 'ci',
      GITHUB_WORKFLOW_REF: 'octo/demo/.github/workflows/ci.yml@refs/heads/main',
      GITHUB_REF: 'refs/heads/main',
      GITHUB_SHA: '0000000000000000000000000000000000000001',
      GITHUB_EVENT_NAME: 'push',
      GITHUB_WORKSPACE: this.workspace,
      RUNNER_OS: 'Linux',
      RUNNER_ARCH: process.arch === 'arm64' ? 'ARM64' : 'X64',
      RUNNER_NAME: 'emulated',
      RUNNER_ENVIRONMENT: 'github-hosted',
      RUNNER_TEMP: this.temp,
      RUNNER_TOOL_CACHE: join(this.config.root, 'toolcache'),
      RUNNER_WORKSPACE: join(this.config.root, 'work', 'repo'),
      RUNNER_TRACKING_ID: this.trackingId,
      ...(this.config.user ? { HOME: this.config.user.home, USER: 'runner' } : {}),
      ...this.config.env,
      ...this.stepEnv,
    };
  }

  async run(step: Step): Promise<StepResult> {
    const guid = randomUUID();
    const fc = (prefix: string): string => join(this.temp, '_runner_file_commands', `${prefix}${guid}`);
    const files = { output: fc('set_output_'), state: fc('save_state_'), summary: fc('step_summary_'), env: fc('set_env_'), path: fc('add_path_') };
    for (const f of Object.values(files)) {
      writeFileSync(f, '');
      if (this.config.user) chownSync(f, this.config.user.uid, this.config.user.gid);
    }
    const env: Record<string, string> = {
      ...this.baseEnv(),
      GITHUB_OUTPUT: files.output,
      GITHUB_STATE: files.state,
      GITHUB_STEP_SUMMARY: files.summary,
      GITHUB_ENV: files.env,
      GITHUB_PATH: files.path,
    };
    let file: string;
    let args: string[];
    let name: string;
    let githubAction: string;
    if (step.kind === 'action') {
      githubAction = this.config.actionId ?? '__octo_ciwatch';
      name = step.name ?? `${step.stage === 'pre' ? 'Pre ' : step.stage === 'post' ? 'Post ' : ''}Run ciwatch`;
      for (const [k, v] of Object.entries({ ...this.config.inputs, ...step.inputs })) env[`INPUT_${k.replace(/ /g, '_').toUpperCase()}`] = v;
      if (step.stage !== 'pre') for (const [k, v] of Object.entries(this.actionState)) env[`STATE_${k}`] = v;
      for (const [k, v] of Object.entries(this.config.env)) if (k.startsWith('ACTIONS_')) env[k] = v;
      env['GITHUB_ACTION_REPOSITORY'] = 'octo/ciwatch';
      env['GITHUB_ACTION_REF'] = 'v1';
      env['GITHUB_ACTION_PATH'] = this.config.actionDir;
      file = NODE;
      args = [...(step.nodeArgs ?? []), join(this.config.actionDir, 'dist', step.stage, 'index.js')];
      Object.assign(env, step.env);
    } else if (step.kind === 'run') {
      this.runCount++;
      githubAction = this.runCount === 1 ? '__run' : `__run_${this.runCount}`;
      name = step.name;
      const script = join(this.temp, `${guid}.sh`);
      writeFileSync(script, step.script);
      file = '/usr/bin/bash';
      args = ['-e', script];
      Object.assign(env, step.env);
    } else {
      githubAction = `__node_${this.results.length}`;
      name = step.name;
      const script = join(this.temp, `${guid}.mjs`);
      writeFileSync(script, step.script);
      file = NODE;
      args = [script];
      Object.assign(env, step.env);
    }
    env['GITHUB_ACTION'] = githubAction;
    this.diag('StepsRunner', `Processing step: DisplayName='${name}'`);
    this.diag('ProcessInvokerWrapper', 'Starting process:');
    this.diag('ProcessInvokerWrapper', `  File name: '${file}'`);
    this.diag('ProcessInvokerWrapper', `  Arguments: '${args.join(' ')}'`);
    this.diag('ProcessInvokerWrapper', `  Working directory: '${this.workspace}'`);

    const result = await new Promise<StepResult>((resolve) => {
      const as = this.config.user ? { uid: this.config.user.uid, gid: this.config.user.gid } : {};
      const child = spawn(file, args, { cwd: this.workspace, env, stdio: ['ignore', 'pipe', 'pipe'], ...as });
      this.diag('ProcessInvokerWrapper', `Process started with process id ${child.pid}, waiting for process exit.`);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
      child.on('close', (code, signal) => {
        resolve({
          name,
          githubAction,
          guid,
          pid: child.pid ?? null,
          exitCode: code,
          signal,
          stdout,
          stderr,
          outputs: parseFileCommand(readFileSync(files.output, 'utf8')),
          state: parseFileCommand(readFileSync(files.state, 'utf8')),
          summary: readFileSync(files.summary, 'utf8'),
          ...parseWorkflowCommands(stdout),
        });
      });
    });
    this.diag('ProcessInvokerWrapper', `Finished process ${result.pid} with exit code ${result.exitCode}, and elapsed time 00:00:01.`);
    this.diag('StepsRunner', `Step result: ${result.exitCode === 0 ? 'Succeeded' : 'Failed'}`);
    if (step.kind === 'action' && step.stage === 'pre') this.actionState = { ...this.actionState, ...result.state };
    for (const [k, v] of Object.entries(parseFileCommand(readFileSync(files.env, 'utf8')))) if (k !== 'NODE_OPTIONS') this.stepEnv[k] = v;
    this.results.push(result);
    return result;
  }
}

/** Parses `name<<DELIM\nvalue\nDELIM` (what @actions/core writes) and legacy `name=value` lines. */
export function parseFileCommand(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line);
    if (heredoc) {
      const [, key, delim] = heredoc;
      const value: string[] = [];
      for (i++; i < lines.length && lines[i] !== delim; i++) value.push(lines[i] ?? '');
      out[key ?? ''] = value.join('\n');
    } else if (line.includes('=')) {
      out[line.slice(0, line.indexOf('='))] = line.slice(line.indexOf('=') + 1);
    }
  }
  return out;
}

function unescapeData(s: string): string {
  return s.replace(/%0D/g, '\r').replace(/%0A/g, '\n').replace(/%25/g, '%');
}

export function parseWorkflowCommands(stdout: string): { annotations: Annotation[]; masks: string[] } {
  const annotations: Annotation[] = [];
  const masks: string[] = [];
  for (const line of stdout.split(/\r?\n/)) {
    const m = /^::([a-z-]+)(?: [^:]*)?::(.*)$/.exec(line);
    if (!m) continue;
    const [, cmd, data] = m;
    if (cmd === 'add-mask') masks.push(unescapeData(data ?? ''));
    else if (cmd === 'warning' || cmd === 'error' || cmd === 'notice' || cmd === 'debug') annotations.push({ level: cmd, message: unescapeData(data ?? '') });
  }
  return { annotations, masks };
}

// Worker mode: `Runner.Worker --import tsx runner.ts scenario.json result.json`
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [scenarioPath, resultPath] = process.argv.slice(2);
  if (!scenarioPath || !resultPath || !existsSync(scenarioPath)) {
    console.error('usage: runner.ts SCENARIO.json RESULT.json');
    process.exit(2);
  }
  const scenario = JSON.parse(readFileSync(scenarioPath, 'utf8')) as { job: JobConfig; steps: Step[] };
  const job = new Job(scenario.job);
  for (const step of scenario.steps) await job.run(step);
  writeFileSync(resultPath, JSON.stringify({ diagLog: job.diagLog, trackingId: job.trackingId, results: job.results }, null, 2));
}
