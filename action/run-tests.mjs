// Runs the test files of one suite with node's built-in runner (node 20 has no glob support in --test).
//   node run-tests.mjs unit   → __tests__/*.test.ts
//   node run-tests.mjs e2e    → __tests__/e2e/*.test.ts (one at a time: they share Azurite and ports)
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const suite = process.argv[2] ?? 'unit';
const dir = suite === 'e2e' ? '__tests__/e2e' : '__tests__';
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.test.ts'))
  .sort()
  .map((f) => join(dir, f));
if (files.length === 0) {
  console.error(`no test files in ${dir}`);
  process.exit(1);
}
const args = ['--import', 'tsx', '--test', '--test-reporter=spec'];
if (suite === 'e2e') args.push('--test-concurrency=1');
const r = spawnSync(process.execPath, [...args, ...process.argv.slice(3), ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
