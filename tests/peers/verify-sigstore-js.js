// An independent verifier built on sigstore-js (@sigstore/verify): verifies a
// Sigstore bundle offline against a trusted_root.json (keyless) or a public key.
//
//   node verify-sigstore-js.js BUNDLE TRUSTED_ROOT --san SAN --issuer ISS   # keyless
//   node verify-sigstore-js.js BUNDLE "" --key PUB.pem                      # publicKey-hint bundle
//
// Exit 0 and "OK <predicateType>" on success; exit 1 and "FAIL <code>: <message>" otherwise.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot, PublicKeyDetails } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

const EMPTY_ROOT = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [],
};

function main() {
  const [bundlePath, rootPath, ...rest] = process.argv.slice(2);
  const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const root = TrustedRoot.fromJSON(rootPath ? JSON.parse(fs.readFileSync(rootPath, 'utf8')) : EMPTY_ROOT);
  let keys;
  let options = {};
  let policy = {};
  const keyPath = opt('--key');
  if (keyPath) {
    const der = crypto.createPublicKey(fs.readFileSync(keyPath, 'utf8')).export({ format: 'der', type: 'spki' });
    const hint = bundle.verificationMaterial.content.publicKey.hint;
    keys = { [hint]: { rawBytes: der, keyDetails: PublicKeyDetails.PKIX_ECDSA_P256_SHA_256 } };
    if (bundle.verificationMaterial.tlogEntries.length === 0) {
      options = { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 };
    }
  } else {
    policy = { subjectAlternativeName: opt('--san'), extensions: { issuer: opt('--issuer') } };
  }
  const verifier = new Verifier(toTrustMaterial(root, keys), options);
  verifier.verify(toSignedEntity(bundle), policy);
  const statement = JSON.parse(Buffer.from(bundle.content.dsseEnvelope.payload).toString('utf8'));
  console.log(`OK ${statement.predicateType} subjects=${statement.subject.map((s) => s.name).join(',')}`);
}

try {
  main();
} catch (e) {
  console.log(`FAIL ${e.code || e.name}: ${e.message}`);
  process.exit(1);
}
