// Loopback Fulcio + Rekor (+ a fake GitHub Actions OIDC token endpoint) for
// ciwatch's keyless tests, built from the handlers @sigstore/mock exports.
// The mock only installs nock interceptors, which a Rust process cannot see,
// so this serves them over HTTP on 127.0.0.1. It adds what real services do
// and the mock skips: Rekor's `dsse` canonicalisation (64-column PEM), and
// Fulcio's proof-of-possession check (a signature over the token's `sub`).
//
// Usage: NODE_PATH=.cache/peers/node/node_modules node mock-server.js OUTDIR [PORT]
// Prints one JSON line (URLs, file paths, identity) and serves until SIGTERM.
// Environment:
//   MOCK_SUBJECT_CLAIM  JWT claim the certificate SAN is taken from (default ciwatch_test_san)
//   MOCK_FULCIO_FAIL    answer the first N signingCert requests with 503
//   MOCK_REKOR_FAIL     answer the first N log entry requests with 503
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { fulcioHandler, initializeCA, initializeCTLog, initializeTLog } = require('@sigstore/mock');

const outDir = process.argv[2];
const port = Number(process.argv[3] || 0);
if (!outDir) {
  console.error('usage: mock-server.js OUTDIR [PORT]');
  process.exit(2);
}
const subjectClaim = process.env.MOCK_SUBJECT_CLAIM || 'ciwatch_test_san';
const SAN = 'https://github.com/acme/app/.github/workflows/ci.yml@refs/heads/main';
const ISSUER = 'https://token.actions.githubusercontent.com';
const SUB = 'repo:acme/app:ref:refs/heads/main';
const REQUEST_TOKEN = crypto.randomBytes(16).toString('hex');
const failures = { fulcio: Number(process.env.MOCK_FULCIO_FAIL || 0), rekor: Number(process.env.MOCK_REKOR_FAIL || 0) };
const stats = { token: 0, fulcio: 0, rekor: 0, popVerified: 0, popRejected: 0 };

const b64url = (s) => Buffer.from(s).toString('base64url');
function fakeJwt() {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: ISSUER, aud: 'sigstore', sub: SUB, iat: now, nbf: now, exp: now + 300,
    [subjectClaim]: SAN,
    repository: 'acme/app', repository_owner: 'acme', ref: 'refs/heads/main',
    sha: 'b'.repeat(40), event_name: 'push', workflow_ref: 'acme/app/.github/workflows/ci.yml@refs/heads/main',
    job_workflow_ref: 'acme/app/.github/workflows/ci.yml@refs/heads/main',
    run_id: '1234', run_attempt: '1', runner_environment: 'github-hosted',
  };
  // The mock never verifies the JWT signature, like a test double should not.
  return `${b64url('{"alg":"RS256","typ":"JWT"}')}.${b64url(JSON.stringify(claims))}.${b64url('sig')}`;
}

// Go encoding/pem form, as real Rekor stores verifiers: 64 columns, \n, trailing newline.
function canonicalPem(pemText) {
  const m = /-----BEGIN ([^-]+)-----([\s\S]*?)-----END \1-----/.exec(pemText);
  if (!m) throw new Error('verifier is not PEM');
  const body = m[2].replace(/\s+/g, '');
  const lines = body.match(/.{1,64}/g) || [];
  return `-----BEGIN ${m[1]}-----\n${lines.join('\n')}\n-----END ${m[1]}-----\n`;
}

// rekor pkg/types/dsse/v0.0.1/entry.go: persist hashes and signatures, not the envelope.
function canonicaliseDsse(entry) {
  if (entry.kind !== 'dsse' || !entry.spec || !entry.spec.proposedContent) return entry;
  const { envelope, verifiers } = entry.spec.proposedContent;
  const env = JSON.parse(envelope);
  const payload = Buffer.from(env.payload, 'base64');
  const verifierPem = canonicalPem(Buffer.from(verifiers[0], 'base64').toString('utf8'));
  // Real Rekor refuses an envelope whose signature does not verify; so do we.
  const key = verifierPem.includes('CERTIFICATE') ? new crypto.X509Certificate(verifierPem).publicKey : crypto.createPublicKey(verifierPem);
  const typeBytes = Buffer.from(env.payloadType);
  const pae = Buffer.concat([Buffer.from(`DSSEv1 ${typeBytes.length} `), typeBytes, Buffer.from(` ${payload.length} `), payload]);
  for (const s of env.signatures) {
    if (!crypto.verify('sha256', pae, key, Buffer.from(s.sig, 'base64'))) throw new Error('dsse signature does not verify with the verifier');
  }
  const signatures = env.signatures
    .map((s) => ({ signature: s.sig, verifier: Buffer.from(verifierPem).toString('base64') }))
    .sort((a, b) => (a.signature < b.signature ? -1 : a.signature > b.signature ? 1 : 0));
  return {
    apiVersion: entry.apiVersion,
    kind: 'dsse',
    spec: {
      envelopeHash: { algorithm: 'sha256', value: crypto.createHash('sha256').update(envelope).digest('hex') },
      payloadHash: { algorithm: 'sha256', value: crypto.createHash('sha256').update(payload).digest('hex') },
      signatures,
    },
  };
}

// Fulcio checks the proof of possession: a signature with the submitted key over
// the token's `sub` (CI issuers) or `email`.
function checkProofOfPossession(body) {
  const req = JSON.parse(body);
  const claims = JSON.parse(Buffer.from(req.credentials.oidcIdentityToken.split('.')[1], 'base64url').toString());
  const challenge = claims.email || claims.sub;
  const key = crypto.createPublicKey(req.publicKeyRequest.publicKey.content);
  const ok = crypto.verify('sha256', Buffer.from(challenge), key, Buffer.from(req.publicKeyRequest.proofOfPossession, 'base64'));
  if (!ok) {
    stats.popRejected++;
    throw new Error(`proof of possession is not a signature over ${JSON.stringify(challenge)}`);
  }
  stats.popVerified++;
}

const spki = (keys) => keys.publicKey.export({ format: 'der', type: 'spki' });
const ecKeys = () => crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });

function trustedRoot(url, caCertDer, rekorKeys, ctlog, start) {
  const keyEntry = (raw, logId) => ({
    baseUrl: url,
    hashAlgorithm: 'SHA2_256',
    publicKey: { rawBytes: Buffer.from(raw).toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } },
    logId: { keyId: Buffer.from(logId).toString('base64') },
  });
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [keyEntry(spki(rekorKeys), crypto.createHash('sha256').update(spki(rekorKeys)).digest())],
    certificateAuthorities: [{
      subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
      uri: url,
      certChain: { certificates: [{ rawBytes: Buffer.from(caCertDer).toString('base64') }] },
      validFor: { start },
    }],
    ctlogs: [keyEntry(Buffer.from(ctlog.publicKey), Buffer.from(ctlog.logID.buffer || ctlog.logID))],
    timestampAuthorities: [],
  };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  const caKeys = ecKeys();
  const rekorKeys = ecKeys();
  const ctlog = await initializeCTLog(caKeys);
  const ca = await initializeCA(caKeys, ctlog);
  const fulcio = fulcioHandler(ca, { strict: true, subjectClaim });
  // A second, unrelated CA: a trusted root naming it must reject our certificates.
  const otherCa = await initializeCA(ecKeys());
  let tlog;

  const server = http.createServer(async (req, res) => {
    const reply = (status, body, type = 'application/json') => {
      res.writeHead(status, { 'Content-Type': type });
      res.end(body);
    };
    try {
      const u = new URL(req.url, 'http://127.0.0.1');
      if (req.method === 'GET' && u.pathname === '/token') {
        stats.token++;
        if (req.headers.authorization !== `Bearer ${REQUEST_TOKEN}`) return reply(401, '{"message":"bad bearer"}');
        if (u.searchParams.get('audience') !== 'sigstore') return reply(400, '{"message":"audience must be sigstore"}');
        return reply(200, JSON.stringify({ count: 1, value: fakeJwt() }));
      }
      if (req.method === 'GET' && u.pathname === '/stats') return reply(200, JSON.stringify(stats));
      const body = await readBody(req);
      if (req.method === 'POST' && u.pathname === '/api/v2/signingCert') {
        stats.fulcio++;
        if (failures.fulcio > 0) { failures.fulcio--; return reply(503, 'unavailable'); }
        checkProofOfPossession(body);
        const r = await fulcio.fn(body);
        return reply(r.statusCode, r.response, r.contentType || 'text/plain');
      }
      if (req.method === 'POST' && u.pathname === '/api/v1/log/entries') {
        stats.rekor++;
        if (failures.rekor > 0) { failures.rekor--; return reply(503, 'unavailable'); }
        const entry = canonicaliseDsse(JSON.parse(body));
        return reply(201, JSON.stringify(await tlog.log(entry)));
      }
      return reply(404, 'not found', 'text/plain');
    } catch (e) {
      return reply(400, String(e && e.message ? e.message : e), 'text/plain');
    }
  });

  server.listen(port, '127.0.0.1', async () => {
    const url = `http://127.0.0.1:${server.address().port}`;
    tlog = await initializeTLog(url, rekorKeys);
    const start = new Date(Date.now() - 3600 * 1000).toISOString();
    const root = trustedRoot(url, ca.rootCertificate, rekorKeys, ctlog, start);
    const untrusted = { ...root, certificateAuthorities: [{ ...root.certificateAuthorities[0], certChain: { certificates: [{ rawBytes: Buffer.from(otherCa.rootCertificate).toString('base64') }] } }] };
    const endpoint = { url, majorApiVersion: 1, validFor: { start }, operator: 'mock' };
    const trustConfig = {
      mediaType: 'application/vnd.dev.sigstore.clienttrustconfig.v0.1+json',
      trustedRoot: root,
      signingConfig: {
        mediaType: 'application/vnd.dev.sigstore.signingconfig.v0.2+json',
        caUrls: [endpoint], oidcUrls: [], rekorTlogUrls: [endpoint], tsaUrls: [],
        rekorTlogConfig: { selector: 'ANY' }, tsaConfig: { selector: 'ANY' },
      },
    };
    const files = {
      trusted_root: path.join(outDir, 'trusted_root.json'),
      trusted_root_untrusted_ca: path.join(outDir, 'trusted_root_untrusted_ca.json'),
      trust_config: path.join(outDir, 'trust_config.json'),
    };
    fs.writeFileSync(files.trusted_root, JSON.stringify(root, null, 2));
    fs.writeFileSync(files.trusted_root_untrusted_ca, JSON.stringify(untrusted, null, 2));
    fs.writeFileSync(files.trust_config, JSON.stringify(trustConfig, null, 2));
    process.stdout.write(JSON.stringify({
      url, token_url: `${url}/token?api-version=2.0`, request_token: REQUEST_TOKEN,
      san: SAN, issuer: ISSUER, sub: SUB, ...files,
    }) + '\n');
  });

  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
