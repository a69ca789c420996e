import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cell, codeBlock } from '../src/markdown.ts';
import { renderNotStarted, renderSummary, SUMMARY_LIMIT_BYTES, type SummaryContext } from '../src/summary.ts';
import { finishResult } from './helpers.ts';

const ctx = (over: Partial<SummaryContext> = {}): SummaryContext => ({
  mode: 'observe',
  version: '0.1.0',
  outDir: '/tmp/ciwatch/out',
  artifact: { name: 'ciwatch-build', enabled: true, id: 7, url: 'https://github.com/o/r/actions/runs/1/artifacts/7', error: null },
  finishError: null,
  failures: [],
  ...over,
});

describe('renderSummary', () => {
  it('renders the per-step table first, then egress, DNS, files, signature and files', () => {
    const md = renderSummary(finishResult('/o'), ctx());
    assert.match(md, /\| step \| execs \| connects \| DNS \| sensitive opens \|/);
    assert.match(md, /\| Run actions/);
    assert.ok(md.includes('| Run actions/checkout@v4 | 5 | 1 | 1 | 0 |'), md);
    assert.ok(md.includes('| Run npm ci | 7 | 2 | 1 | 1 |'));
    assert.ok(md.includes('| 140.82.112.3:443 | tcp | github.com | Run actions/checkout@v4 |'));
    assert.ok(md.includes('| registry.npmjs.org | 104.16.0.1 | Run npm ci |'));
    assert.ok(md.includes('| /home/runner/.npmrc | Run npm ci |'));
    const order = ['### Steps', '### Egress destinations', '### DNS names resolved', '### Sensitive file opens', '### Signature', '### Files'].map((h) => md.indexOf(h));
    assert.ok(order.every((v, i) => v >= 0 && (i === 0 || v > order[i - 1]!)), `section order ${order}`);
    assert.match(md, /Sigstore keyless/);
    assert.match(md, /```sh\nciwatch verify --bundle \/o\/attestation\.sigstore\.json --certificate-identity https:\/\/github\.com\/o\/r/);
    assert.match(md, /\[`ciwatch-build`\]\(https:\/\/github\.com\/o\/r\/actions\/runs\/1\/artifacts\/7\)/);
    assert.ok(!md.includes('[!CAUTION]'));
  });

  it('labels pre and post stages and brackets IPv6 destinations', () => {
    const r = finishResult('/o', {
      steps: [{ id: 'p', name: 'Post Run ciwatch', stage: 'Post', execs: 1, connects: 0, dns: 0, files: 0 }],
      egress: [{ addr: '2606:4700::1', port: 443, protocol: 'tcp', hosts: [], steps: ['p', 'unknown-step'] }],
    });
    const md = renderSummary(r, ctx());
    assert.ok(md.includes('| Post Run ciwatch \\(post\\) | 1 | 0 | 0 | 0 |'), md);
    assert.ok(md.includes('| \\[2606:4700::1\\]:443 | tcp |  | Post Run ciwatch \\(post\\), unknown-step |'), md);
  });

  it('says prominently that the agent died', () => {
    const md = renderSummary(finishResult('/o', { agent_died: true }), ctx());
    const caution = md.indexOf('> [!CAUTION]\n> **The ciwatch agent died during this job.**');
    assert.ok(caution >= 0 && caution < md.indexOf('### Steps'));
  });

  it('lists denials and lost events', () => {
    const md = renderSummary(
      finishResult('/o', { denied: 2, lost: 5, denied_events: [{ addr: '203.0.113.9', port: 443, hosts: ['evil.example'], steps: ['s2'], comm: 'curl', count: 2 }] }),
      ctx({ mode: 'enforce' }),
    );
    assert.match(md, /### Denied connections \(2\)/);
    assert.ok(md.includes('| 203.0.113.9:443 | evil.example | Run npm ci | curl | 2 |'));
    assert.match(md, /5 event\(s\) were lost/);
  });

  it('lists refused DNS lookups and marks unlisted names', () => {
    const md = renderSummary(
      finishResult('/o', {
        dns: [{ host: 'exfil.example', addrs: [], steps: ['s2'], unlisted: true }],
        refused_lookups: [{ host: 'exfil.example', reasons: ['unlisted'], steps: ['s2'], comm: 'python3', count: 3 }],
      }),
      ctx({ mode: 'enforce' }),
    );
    assert.match(md, /### Refused DNS lookups \(3\)/);
    assert.ok(md.includes('| exfil.example | unlisted | Run npm ci | python3 | 3 |'), md);
    assert.ok(md.includes('| exfil.example (unlisted) |'), md);
  });

  it('lists denied sockets with how they were refused', () => {
    const md = renderSummary(
      finishResult('/o', {
        denied_sockets: [{ socket: 'packet', family: 'packet', protocol: 3, refusals: ['killed'], steps: ['s2'], comm: 'tcpdump', count: 2 }],
      }),
      ctx({ mode: 'enforce' }),
    );
    assert.match(md, /### Denied sockets \(2\)/);
    assert.ok(md.includes('| packet | packet | killed | Run npm ci | tcpdump | 2 |'), md);
    assert.match(md, / · 2 denied sockets · /);
  });

  it('shows the learned policy and its diff in learn mode', () => {
    const md = renderSummary(finishResult('/o', { proposed_policy: 'allow:\n  - github.com:443\n', policy_diff: '+  - github.com:443\n' }), ctx({ mode: 'learn' }));
    assert.match(md, /### Learned policy/);
    assert.match(md, /```yaml\nallow:\n  - github.com:443\n```/);
    assert.match(md, /```diff\n\+  - github.com:443\n```/);
  });

  it('reports an upload failure with the kept directory', () => {
    const md = renderSummary(finishResult('/o'), ctx({ artifact: { name: 'a', enabled: true, id: null, url: null, error: 'connect ECONNREFUSED' } }));
    assert.match(md, /The artifact upload failed: connect ECONNREFUSED\n> The files were kept on the runner in `\/tmp\/ciwatch\/out`/);
  });

  it('reports a finish failure without a result', () => {
    const md = renderSummary(null, ctx({ finishError: 'exit 70' }));
    assert.match(md, /could not seal the trace:\*\* exit 70/);
  });

  it('escapes hostile names so they cannot break the table or inject HTML', () => {
    const r = finishResult('/o', { dns: [{ host: 'a|b<script>`x`\n## fake', addrs: [], steps: [], unlisted: null }] });
    const md = renderSummary(r, ctx());
    assert.ok(md.includes('| a\\|b&lt;script&gt;\\`x\\` \\#\\# fake |  |  |'), md);
    assert.ok(!md.includes('<script>'));
  });

  it('stays within 1 MiB and points to the artifact when truncating', () => {
    const egress = Array.from({ length: 40_000 }, (_, i) => ({
      addr: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
      port: 443,
      protocol: 'tcp',
      hosts: [`host-${i}.example.com`],
      steps: ['s1', 's2'],
    }));
    const r = finishResult('/o', { egress, proposed_policy: 'x'.repeat(10_000) });
    const md = renderSummary(r, ctx());
    assert.ok(Buffer.byteLength(md) <= SUMMARY_LIMIT_BYTES, `${Buffer.byteLength(md)} bytes`);
    assert.ok(Buffer.byteLength(md) > SUMMARY_LIMIT_BYTES - 8 * 1024, 'uses the space it has');
    assert.match(md, /> \[!NOTE\]\n> The job summary is limited to 1 MiB, so it was truncated: \d+ of 40000 rows of "Egress destinations"; 1 of 1 rows of "DNS names resolved"/);
    assert.match(md, /in the artifact `ciwatch-build`/);
    assert.match(md, /### Signature/, 'the verify instructions survive truncation');
    assert.match(md, /ciwatch verify/);
    assert.ok(md.includes('| Run npm ci | 7 | 2 | 1 | 1 |'), 'earlier sections are kept whole');
  });

  it('does not truncate a summary that fits', () => {
    const md = renderSummary(finishResult('/o'), ctx(), 64 * 1024);
    assert.ok(!md.includes('truncated'));
  });

  it('truncates at a small limit too', () => {
    const md = renderSummary(finishResult('/o'), ctx(), 1300);
    assert.ok(Buffer.byteLength(md) <= 1300, `${Buffer.byteLength(md)}`);
    assert.match(md, /truncated/);
  });
});

describe('markdown helpers', () => {
  it('fences around backticks', () => {
    assert.equal(codeBlock('a ``` b'), '````\na ``` b\n````\n');
  });
  it('cuts long cells', () => {
    assert.equal([...cell('x'.repeat(500), 10)].length, 10);
  });
  it('renders the not-started notice', () => {
    assert.match(renderNotStarted('runner not supported', 'macOS', false), /\[!WARNING\][\s\S]*without runtime monitoring/);
    assert.match(renderNotStarted('x', 'y', true), /\[!CAUTION\][\s\S]*`fail-on`/);
  });
});
