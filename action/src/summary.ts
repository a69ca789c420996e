// The job summary: per-step table, egress destinations, DNS names, sensitive file opens, denials, the
// learned policy (learn mode), then the signature and how to verify it. GitHub drops a step summary above
// 1 MiB (actions/runner CreateStepSummaryCommand.AttachmentSizeLimit), so rows are cut to fit, with a
// note pointing to the artifact, which always holds everything.

import type { FinishResult, Mode, StepCounts } from './agent.ts';
import { bytes, cell, codeBlock, row, table } from './markdown.ts';

export const SUMMARY_LIMIT_BYTES = 1024 * 1024;

export interface ArtifactInfo {
  name: string;
  /** false when upload-artifact is off */
  enabled: boolean;
  id: number | null;
  url: string | null;
  error: string | null;
}

export interface SummaryContext {
  mode: Mode;
  version: string;
  outDir: string;
  artifact: ArtifactInfo;
  /** `ciwatch finish` failed or printed unusable output */
  finishError: string | null;
  /** fail-on conditions that turned the job red */
  failures: string[];
}

export const ARTIFACT_FILES = ['events.ndjson', 'attestation.intoto.jsonl', 'attestation.sigstore.json', 'summary.md'];

function stepLabel(s: StepCounts): string {
  const stage = s.stage && s.stage.toLowerCase() !== 'main' ? ` (${s.stage.toLowerCase()})` : '';
  return `${cell(s.name || s.id)}${cell(stage)}`;
}

function stepNames(ids: string[], byId: Map<string, StepCounts>): string {
  if (ids.length === 0) return '';
  return ids.map((id) => (byId.has(id) ? stepLabel(byId.get(id)!) : cell(id))).join(', ');
}

function destination(addr: string, port: number | null): string {
  if (port === null || port === undefined) return addr;
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

interface Section {
  title: string;
  intro?: string;
  header: string;
  rows: string[];
  empty: string;
}

function asString(v: unknown): string | null {
  return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : null;
}

function asStrings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

function deniedRow(e: Record<string, unknown>, byId: Map<string, StepCounts>): string {
  const addr = asString(e['addr']) ?? '?';
  const port = typeof e['port'] === 'number' ? (e['port'] as number) : null;
  const hosts = asStrings(e['hosts']);
  const host = asString(e['host']);
  if (host && !hosts.includes(host)) hosts.unshift(host);
  const steps = asStrings(e['steps']);
  const step = asString(e['step']);
  if (step && !steps.includes(step)) steps.push(step);
  const proc = asString(e['comm']) ?? asString(e['process']) ?? '';
  const times = typeof e['count'] === 'number' ? (e['count'] as number) : 1;
  return row([cell(destination(addr, port)), cell(hosts.join(', ')), stepNames(steps, byId), cell(proc), times]);
}

/** DNS queries the kernel refused under `dns.refuse-unlisted`. */
export function refusedCount(r: FinishResult): number {
  return (r.refused_lookups ?? []).reduce((n, e) => n + (typeof e['count'] === 'number' ? (e['count'] as number) : 1), 0);
}

function refusedRow(e: Record<string, unknown>, byId: Map<string, StepCounts>): string {
  const times = typeof e['count'] === 'number' ? (e['count'] as number) : 1;
  return row([
    cell(asString(e['host']) ?? '?'),
    cell(asStrings(e['reasons']).join(', ')),
    stepNames(asStrings(e['steps']), byId),
    cell(asString(e['comm']) ?? ''),
    times,
  ]);
}

/** Raw, packet and ping sockets the kernel refused because the policy's `sockets:` does not list them. */
export function deniedSocketCount(r: FinishResult): number {
  return (r.denied_sockets ?? []).reduce((n, e) => n + (typeof e['count'] === 'number' ? (e['count'] as number) : 1), 0);
}

function deniedSocketRow(e: Record<string, unknown>, byId: Map<string, StepCounts>): string {
  const times = typeof e['count'] === 'number' ? (e['count'] as number) : 1;
  return row([
    cell(asString(e['socket']) ?? '?'),
    cell(asString(e['family']) ?? ''),
    cell(asStrings(e['refusals']).join(', ')),
    stepNames(asStrings(e['steps']), byId),
    cell(asString(e['comm']) ?? ''),
    times,
  ]);
}

function sections(r: FinishResult): Section[] {
  const byId = new Map(r.steps.map((s) => [s.id, s]));
  const out: Section[] = [
    {
      title: 'Steps',
      header: table(['step', 'execs', 'connects', 'DNS', 'sensitive opens'], ['l', 'r', 'r', 'r', 'r']),
      rows: r.steps.map((s) => row([stepLabel(s), s.execs, s.connects, s.dns, s.files])),
      empty: 'No step was attributed.',
    },
    {
      title: 'Egress destinations',
      header: table(['destination', 'protocol', 'host names', 'steps'], ['l', 'l', 'l', 'l']),
      rows: r.egress.map((e) =>
        row([cell(destination(e.addr, e.port)), cell(e.protocol), cell(e.hosts.join(', ')), stepNames(e.steps, byId)]),
      ),
      empty: 'No outbound connection.',
    },
    {
      title: 'DNS names resolved',
      header: table(['host', 'addresses', 'steps'], ['l', 'l', 'l']),
      rows: r.dns.map((d) => row([cell(d.host) + (d.unlisted ? ' (unlisted)' : ''), cell(d.addrs.join(', ')), stepNames(d.steps, byId)])),
      empty: 'No name was resolved through libc.',
    },
    {
      title: 'Sensitive file opens',
      header: table(['path', 'steps'], ['l', 'l']),
      rows: r.files.map((f) => row([cell(f.path), stepNames(f.steps, byId)])),
      empty: 'No sensitive file was opened.',
    },
  ];
  if (r.denied > 0 || r.denied_events.length > 0) {
    out.push({
      title: `Denied connections (${r.denied})`,
      intro: 'These connections were refused with EPERM because the policy does not allow them.',
      header: table(['destination', 'host names', 'steps', 'process', 'times'], ['l', 'l', 'l', 'l', 'r']),
      rows: r.denied_events.map((e) => deniedRow(e, byId)),
      empty: 'The agent counted denials but listed none.',
    });
  }
  const refused = r.refused_lookups ?? [];
  if (refused.length > 0) {
    out.push({
      title: `Refused DNS lookups (${refusedCount(r)})`,
      intro: 'With `dns.refuse-unlisted`, these queries never left the runner; the callers got EPERM.',
      header: table(['host name', 'reason', 'steps', 'process', 'times'], ['l', 'l', 'l', 'l', 'r']),
      rows: refused.map((e) => refusedRow(e, byId)),
      empty: '',
    });
  }
  const sockets = r.denied_sockets ?? [];
  if (sockets.length > 0) {
    out.push({
      title: `Denied sockets (${deniedSocketCount(r)})`,
      intro:
        "The policy's `sockets:` does not allow these raw, packet or ping sockets: `eperm`, socket() failed with EPERM; " +
        '`killed`, the process was killed before socket() returned (packet sockets).',
      header: table(['socket', 'family', 'refusal', 'steps', 'process', 'times'], ['l', 'l', 'l', 'l', 'l', 'r']),
      rows: sockets.map((e) => deniedSocketRow(e, byId)),
      empty: '',
    });
  }
  return out;
}

function signatureSection(r: FinishResult): string {
  const s = r.signing;
  let md = '### Signature\n\n';
  if (s.method === 'none') {
    md += '**Not signed.** The trace is only as trustworthy as the job that produced it.\n';
  } else {
    const how = s.method === 'keyless' ? 'Sigstore keyless (Fulcio certificate, Rekor entry)' : 'a local key';
    md += `Signed with ${how}`;
    md += s.identity ? ` as \`${s.identity.replace(/`/g, "'")}\`.\n` : '.\n';
  }
  if (s.fallback) md += `\n> [!WARNING]\n> Signing fell back: ${cell(s.fallback, 1000)}\n`;
  const files = [r.envelope ? 'the DSSE envelope `attestation.intoto.jsonl`' : null, r.bundle ? 'the Sigstore bundle `attestation.sigstore.json`' : null]
    .filter(Boolean)
    .join(' and ');
  if (files) md += `\nThe artifact holds ${files}. `;
  if (s.verify_command) {
    md += 'Verify the downloaded trace with:\n\n' + codeBlock(s.verify_command, 'sh');
  }
  return md + '\n';
}

function filesSection(ctx: SummaryContext): string {
  const a = ctx.artifact;
  let md = '### Files\n\n';
  if (!a.enabled) {
    md += `Artifact upload is off (\`upload-artifact: false\`); the files are on the runner in \`${cell(ctx.outDir)}\`.\n`;
  } else if (a.error) {
    md += `> [!WARNING]\n> The artifact upload failed: ${cell(a.error, 1000)}\n> The files were kept on the runner in \`${cell(ctx.outDir)}\`.\n`;
  } else {
    const name = a.url ? `[\`${cell(a.name)}\`](${a.url})` : `\`${cell(a.name)}\``;
    md += `Artifact ${name} holds ${ARTIFACT_FILES.map((f) => `\`${f}\``).join(', ')} (the ones the agent wrote).\n`;
  }
  return md + '\n';
}

function learnSection(r: FinishResult, budget: number): { md: string; omitted: boolean } {
  if (r.proposed_policy === null && r.policy_diff === null) return { md: '', omitted: false };
  let md = '### Learned policy\n\n';
  if (r.proposed_policy !== null) md += 'Egress observed in this job, as a policy file:\n\n' + codeBlock(r.proposed_policy, 'yaml') + '\n';
  if (r.policy_diff !== null) md += 'Changes against the policy in force:\n\n' + codeBlock(r.policy_diff, 'diff') + '\n';
  if (bytes(md) <= budget) return { md, omitted: false };
  return { md: '### Learned policy\n\nThe proposed policy is too large for the job summary; it is in the artifact\'s `summary.md`.\n\n', omitted: true };
}

function header(r: FinishResult | null, ctx: SummaryContext): string {
  let md = '## ciwatch runtime trace\n\n';
  if (r?.agent_died) {
    md +=
      '> [!CAUTION]\n> **The ciwatch agent died during this job.** Nothing after that moment was recorded: ' +
      'this trace is incomplete and must not be read as "nothing else happened".\n\n';
  }
  if (ctx.finishError) {
    md += `> [!CAUTION]\n> **ciwatch could not seal the trace:** ${cell(ctx.finishError, 2000)}\n\n`;
  }
  if (r && r.lost > 0) {
    md += `> [!WARNING]\n> ${r.lost} event(s) were lost (the kernel's ring buffer was full). The counts below are lower bounds.\n\n`;
  }
  for (const f of ctx.failures) md += `> [!CAUTION]\n> Failing the job (\`fail-on\`): ${cell(f, 1000)}\n\n`;
  if (r) {
    const c = r.counts;
    md +=
      `Mode **${ctx.mode}** · ciwatch ${cell(ctx.version)} · ${c.exec} execs · ${c.connect} connects · ` +
      `${c.dns} DNS lookups · ${c.file} sensitive file opens · ${r.denied} denied${refusedCount(r) > 0 ? ` · ${refusedCount(r)} refused lookups` : ''}` +
      `${deniedSocketCount(r) > 0 ? ` · ${deniedSocketCount(r)} denied sockets` : ''} · ${r.lost} lost\n\n`;
  }
  return md;
}

/** Renders the whole summary in at most `limit` bytes. */
export function renderSummary(r: FinishResult | null, ctx: SummaryContext, limit = SUMMARY_LIMIT_BYTES): string {
  const head = header(r, ctx);
  const files = filesSection(ctx);
  if (!r) return head + files;

  const sig = signatureSection(r);
  const noteReserve = 600;
  let budget = limit - bytes(head) - bytes(sig) - bytes(files) - noteReserve;
  let body = '';
  const omitted: string[] = [];
  let full = false;
  for (const s of sections(r)) {
    const top = `### ${s.title}\n\n${s.intro ? s.intro + '\n\n' : ''}`;
    if (s.rows.length === 0) {
      const piece = `${top}${s.empty}\n\n`;
      if (!full && bytes(piece) <= budget) {
        body += piece;
        budget -= bytes(piece);
      }
      continue;
    }
    let piece = top + s.header;
    let shown = 0;
    if (!full && bytes(piece) <= budget) {
      let used = bytes(piece);
      for (const line of s.rows) {
        const n = bytes(line);
        if (used + n > budget) {
          full = true;
          break;
        }
        piece += line;
        used += n;
        shown++;
      }
      if (shown > 0) {
        body += piece + '\n';
        budget -= used + 1;
      } else {
        full = true;
      }
    } else {
      full = true;
    }
    if (shown < s.rows.length) omitted.push(`${s.rows.length - shown} of ${s.rows.length} rows of "${s.title}"`);
  }
  const learn = learnSection(r, Math.max(0, budget));
  body += learn.md;
  if (learn.omitted) omitted.push('the learned policy');

  let note = '';
  if (omitted.length > 0) {
    const where = ctx.artifact.enabled && !ctx.artifact.error ? `the artifact \`${cell(ctx.artifact.name)}\`` : `\`${cell(ctx.outDir)}\` on the runner`;
    note =
      `> [!NOTE]\n> The job summary is limited to 1 MiB, so it was truncated: ${omitted.join('; ')} are not shown. ` +
      `The complete lists are in \`events.ndjson\` and \`summary.md\` in ${where}.\n\n`;
  }
  let out = head + body + note + sig + files;
  // The reserve covers the note; this guard only matters for pathological names.
  if (bytes(out) > limit) out = head + note + sig + files;
  return out;
}

/** The summary pre writes when it does not start the agent. */
export function renderNotStarted(title: string, reason: string, failing: boolean): string {
  const kind = failing ? 'CAUTION' : 'WARNING';
  const effect = failing
    ? 'The job fails because `fail-on` says so.'
    : 'The job continues **without runtime monitoring**: no trace will be recorded or signed.';
  return `## ciwatch: ${cell(title)}\n\n> [!${kind}]\n> ${cell(reason, 2000)}\n>\n> ${effect}\n`;
}
