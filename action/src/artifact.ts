// Uploads the trace files as ONE artifact through the official client (artifact protocol v4).

import { existsSync } from 'node:fs';

import { DefaultArtifactClient } from '@actions/artifact';

export type Uploader = (name: string, files: string[], rootDirectory: string) => Promise<{ id: number | null }>;

export const artifactUploader: Uploader = async (name, files, rootDirectory) => {
  const client = new DefaultArtifactClient();
  const res = await client.uploadArtifact(name, files, rootDirectory, {});
  return { id: res.id ?? null };
};

/** The files of a trace that exist, in a stable order. */
export function traceFiles(paths: (string | null | undefined)[], exists: (p: string) => boolean = existsSync): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const p of paths) {
    if (!p || seen.has(p) || !exists(p)) continue;
    seen.add(p);
    out.push(p);
  }
  return out;
}

/**
 * A name unique within the workflow run: artifact v4 refuses a second artifact of the same name, and the
 * same job key runs several times in a matrix. The job's backend id from the runtime token tells matrix
 * legs apart.
 */
export function defaultArtifactName(env: NodeJS.ProcessEnv): string {
  const job = (env['GITHUB_JOB'] || 'job').replace(/[":<>|*?\\/\r\n]/g, '-');
  const jobId = jobBackendId(env['ACTIONS_RUNTIME_TOKEN']);
  const attempt = env['GITHUB_RUN_ATTEMPT'] && env['GITHUB_RUN_ATTEMPT'] !== '1' ? `-attempt${env['GITHUB_RUN_ATTEMPT']}` : '';
  return `ciwatch-${job}${jobId ? '-' + jobId.replace(/-/g, '').slice(0, 8) : ''}${attempt}`;
}

/** `Actions.Results:<runId>:<jobId>` from the `scp` claim of ACTIONS_RUNTIME_TOKEN (a JWT). */
export function jobBackendId(token: string | undefined): string | null {
  if (!token) return null;
  const payload = token.split('.')[1];
  if (!payload) return null;
  try {
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { scp?: unknown };
    if (typeof claims.scp !== 'string') return null;
    for (const scope of claims.scp.split(' ')) {
      const parts = scope.split(':');
      if (parts[0] === 'Actions.Results' && parts.length === 3 && parts[2]) return parts[2];
    }
  } catch {
    return null;
  }
  return null;
}

export function artifactUrl(env: NodeJS.ProcessEnv, id: number | null): string | null {
  const server = env['GITHUB_SERVER_URL'] || 'https://github.com';
  const repo = env['GITHUB_REPOSITORY'];
  const run = env['GITHUB_RUN_ID'];
  if (id === null || !repo || !run) return null;
  return `${server}/${repo}/actions/runs/${run}/artifacts/${id}`;
}

