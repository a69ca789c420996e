// Fake GitHub services on 127.0.0.1 for the end-to-end tests:
//  - Azurite (npm `azurite`, blob service only) as the artifact blob store;
//  - the artifact v4 Twirp service (github.actions.results.api.v1.ArtifactService: CreateArtifact,
//    FinalizeArtifact, ListArtifacts), snake_case JSON, handing out SAS URLs into Azurite;
//  - the Actions OIDC token endpoint (`GET ...?audience=` with the request token as bearer → {"value": JWT});
//  - a release-download server serving a binary and its checksum file, with tampering and failure knobs.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createConnection, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlobSASPermissions, BlobServiceClient, generateBlobSASQueryParameters, StorageSharedKeyCredential } from '@azure/storage-blob';

const ACTION_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

// Azurite's well-known development account (public, documented by Microsoft).
const ACCOUNT = 'devstoreaccount1';
const ACCOUNT_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const CONTAINER = 'actions-results';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = createConnection({ host: '127.0.0.1', port }, () => {
        c.end();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
}

export class Azurite {
  private constructor(
    readonly port: number,
    private readonly proc: ChildProcess,
    private readonly location: string,
    readonly credential: StorageSharedKeyCredential,
  ) {}

  static async start(): Promise<Azurite> {
    const port = await freePort();
    const location = mkdtempSync(join(tmpdir(), 'azurite-'));
    const bin = join(ACTION_DIR, 'node_modules', 'azurite', 'dist', 'src', 'blob', 'main.js');
    const proc = spawn(
      process.execPath,
      [bin, '--blobHost', '127.0.0.1', '--blobPort', String(port), '--location', location, '--silent', '--skipApiVersionCheck', '--loose', '--disableProductStyleUrl', '--disableTelemetry'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await waitForPort(port, 20_000);
    } catch (e) {
      proc.kill('SIGKILL');
      throw new Error(`Azurite did not start: ${(e as Error).message}\n${stderr}`);
    }
    const az = new Azurite(port, proc, location, new StorageSharedKeyCredential(ACCOUNT, ACCOUNT_KEY));
    await az.service().getContainerClient(CONTAINER).createIfNotExists();
    return az;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/${ACCOUNT}`;
  }

  service(): BlobServiceClient {
    return new BlobServiceClient(this.url, this.credential);
  }

  /** A write-only SAS URL for one blob, as the real results service hands out. */
  signedUploadUrl(blobName: string): string {
    const sas = generateBlobSASQueryParameters(
      { containerName: CONTAINER, blobName, permissions: BlobSASPermissions.parse('cw'), expiresOn: new Date(Date.now() + 3600_000) },
      this.credential,
    ).toString();
    return `${this.url}/${CONTAINER}/${blobName}?${sas}`;
  }

  async download(blobName: string): Promise<Buffer> {
    return this.service().getContainerClient(CONTAINER).getBlobClient(blobName).downloadToBuffer();
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.proc.once('exit', () => resolve());
      this.proc.kill('SIGTERM');
      setTimeout(() => {
        this.proc.kill('SIGKILL');
        resolve();
      }, 3000).unref();
    });
    rmSync(this.location, { recursive: true, force: true });
  }
}

export interface ArtifactRecord {
  name: string;
  runBackendId: string;
  jobBackendId: string;
  blobName: string;
  finalized: boolean;
  size: number | null;
  hash: string | null;
  id: number;
  version: number | null;
}

function b64url(s: string | Buffer): string {
  return Buffer.from(s).toString('base64url');
}

export interface ServicesOptions {
  azurite: Azurite;
  runBackendId?: string;
  jobBackendId?: string;
}

export interface Release {
  /** bytes served at /releases/download/v<version>/<asset> */
  binary: Buffer;
  /** replace the served bytes (tampering), keeping `sha256` of the original */
  tampered?: Buffer;
  /** the first N requests of the binary answer 503 */
  failFirst?: number;
}

/** One HTTP server on 127.0.0.1 for the Twirp service, the OIDC endpoint and the release downloads. */
export class FakeGitHub {
  readonly artifacts: ArtifactRecord[] = [];
  readonly requests: { method: string; url: string; auth: string | undefined }[] = [];
  readonly runBackendId: string;
  readonly jobBackendId: string;
  readonly runtimeToken: string;
  readonly oidcKey: KeyObject;
  readonly oidcJwks: object;
  release: Release | null = null;
  releaseHits = 0;
  /** answer every Twirp call with this status (the artifact service is down) */
  twirpStatus: number | null = null;
  private server: Server | null = null;
  port = 0;

  constructor(private readonly opts: ServicesOptions) {
    this.runBackendId = opts.runBackendId ?? randomUUID();
    this.jobBackendId = opts.jobBackendId ?? randomUUID();
    // The runtime token is a JWT whose `scp` claim carries Actions.Results:<runId>:<jobId>; the artifact
    // client reads the backend ids from it without checking its signature.
    const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const claims = b64url(JSON.stringify({ scp: `Actions.GenericRead:${randomUUID()} Actions.Results:${this.runBackendId}:${this.jobBackendId}`, iat: Math.floor(Date.now() / 1000) }));
    this.runtimeToken = `${header}.${claims}.${b64url('not-a-real-signature')}`;
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    this.oidcKey = privateKey;
    this.oidcJwks = { keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'ciwatch-test', alg: 'RS256', use: 'sig' }] };
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The environment a JS action step gets from the runner for these services. */
  actionEnv(): Record<string, string> {
    return {
      ACTIONS_RUNTIME_TOKEN: this.runtimeToken,
      ACTIONS_RUNTIME_URL: `${this.origin}/runtime/`,
      ACTIONS_RESULTS_URL: `${this.origin}/`,
      ACTIONS_ID_TOKEN_REQUEST_URL: `${this.origin}/oidc/token?api-version=2.0`,
      ACTIONS_ID_TOKEN_REQUEST_TOKEN: this.runtimeToken,
    };
  }

  releaseUrl(version: string, asset: string): string {
    return `${this.origin}/releases/download/v${version}/${asset}`;
  }

  /** An RS256 ID token shaped like GitHub's (issuer = this server, so a loopback Fulcio can verify it via /.well-known). */
  idToken(audience: string): string {
    const now = Math.floor(Date.now() / 1000);
    const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: 'ciwatch-test' }));
    const claims = b64url(
      JSON.stringify({
        iss: this.origin,
        aud: audience,
        sub: 'repo:octo/demo:ref:refs/heads/main',
        repository: 'octo/demo',
        repository_owner: 'octo',
        ref: 'refs/heads/main',
        sha: '0000000000000000000000000000000000000001',
        workflow_ref: 'octo/demo/.github/workflows/ci.yml@refs/heads/main',
        job_workflow_ref: 'octo/demo/.github/workflows/ci.yml@refs/heads/main',
        run_id: '1000',
        run_attempt: '1',
        runner_environment: 'github-hosted',
        event_name: 'push',
        iat: now,
        nbf: now - 5,
        exp: now + 600,
      }),
    );
    const sig = sign('RSA-SHA256', Buffer.from(`${header}.${claims}`), this.oidcKey);
    return `${header}.${claims}.${b64url(sig)}`;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      void this.handle(req, res).catch((e: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(e));
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', () => resolve()));
    const addr = this.server.address();
    this.port = typeof addr === 'object' && addr ? addr.port : 0;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server?.closeAllConnections();
  }

  private async body(req: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  private json(res: ServerResponse, status: number, value: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(value));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.origin);
    this.requests.push({ method: req.method ?? '', url: url.pathname + url.search, auth: req.headers.authorization });

    const twirp = /^\/twirp\/github\.actions\.results\.api\.v1\.ArtifactService\/(\w+)$/.exec(url.pathname);
    if (twirp && req.method === 'POST') return this.twirp(twirp[1] ?? '', req, res);

    if (url.pathname === '/oidc/token' && req.method === 'GET') {
      if (req.headers.authorization !== `Bearer ${this.runtimeToken}`) return this.json(res, 401, { message: 'bad token' });
      return this.json(res, 200, { value: this.idToken(url.searchParams.get('audience') ?? 'https://github.com/octo') });
    }
    if (url.pathname === '/.well-known/openid-configuration') {
      return this.json(res, 200, { issuer: this.origin, jwks_uri: `${this.origin}/.well-known/jwks`, id_token_signing_alg_values_supported: ['RS256'] });
    }
    if (url.pathname === '/.well-known/jwks') return this.json(res, 200, this.oidcJwks);

    const rel = /^\/releases\/download\/v[^/]+\/([^/]+)$/.exec(url.pathname);
    if (rel && this.release && req.method === 'GET') {
      const asset = rel[1] ?? '';
      if (asset.endsWith('.sha256')) {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`${createHash('sha256').update(this.release.binary).digest('hex')}  ${asset.replace(/\.sha256$/, '')}\n`);
        return;
      }
      this.releaseHits++;
      if (this.releaseHits <= (this.release.failFirst ?? 0)) {
        res.writeHead(503);
        res.end('try again');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(this.release.tampered ?? this.release.binary);
      return;
    }
    res.writeHead(404);
    res.end('not found');
  }

  private async twirp(method: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.twirpStatus !== null) return this.json(res, this.twirpStatus, { code: 'unavailable', msg: 'artifact service is down' });
    if (req.headers.authorization !== `Bearer ${this.runtimeToken}`) return this.json(res, 401, { code: 'unauthenticated', msg: 'bad token' });
    const body = JSON.parse(await this.body(req)) as Record<string, unknown>;
    // The client sends proto field names (snake_case) and only non-default values.
    if (body['workflow_run_backend_id'] !== this.runBackendId || body['workflow_job_run_backend_id'] !== this.jobBackendId) {
      return this.json(res, 400, { code: 'invalid_argument', msg: `backend ids do not match: ${JSON.stringify(body)}` });
    }
    const name = String(body['name'] ?? '');
    if (method === 'CreateArtifact') {
      if (this.artifacts.some((a) => a.name === name && a.finalized)) return this.json(res, 409, { code: 'already_exists', msg: 'an artifact with this name already exists' });
      const blobName = `${this.runBackendId}/${this.jobBackendId}/${name}.zip`;
      this.artifacts.push({ name, runBackendId: this.runBackendId, jobBackendId: this.jobBackendId, blobName, finalized: false, size: null, hash: null, id: this.artifacts.length + 1, version: typeof body['version'] === 'number' ? (body['version'] as number) : null });
      return this.json(res, 200, { ok: true, signed_upload_url: this.opts.azurite.signedUploadUrl(blobName) });
    }
    if (method === 'FinalizeArtifact') {
      const a = [...this.artifacts].reverse().find((x) => x.name === name && !x.finalized);
      if (!a) return this.json(res, 404, { code: 'not_found', msg: 'no such artifact' });
      a.finalized = true;
      a.size = Number(body['size'] ?? 0);
      a.hash = typeof body['hash'] === 'string' ? (body['hash'] as string) : null;
      return this.json(res, 200, { ok: true, artifact_id: String(a.id) });
    }
    if (method === 'ListArtifacts') {
      return this.json(res, 200, {
        artifacts: this.artifacts.filter((a) => a.finalized).map((a) => ({ workflow_run_backend_id: a.runBackendId, workflow_job_run_backend_id: a.jobBackendId, database_id: String(a.id), name: a.name, size: String(a.size ?? 0) })),
      });
    }
    return this.json(res, 404, { code: 'bad_route', msg: `no method ${method}` });
  }
}
