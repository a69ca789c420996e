"""An independent DSSE verifier built on securesystemslib: checks every
envelope of an attestation.intoto.jsonl file against an ECDSA P-256 public key.

    python verify_dsse.py ENVELOPES.jsonl PUB.pem

Exit 0 and "OK <n> envelope(s)" on success; exit 1 and "FAIL ..." otherwise.
"""
import json
import sys

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def main(path: str, pem_path: str) -> int:
    with open(pem_path, "rb") as f:
        public = load_pem_public_key(f.read())
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        print("FAIL no envelope")
        return 1
    for n, line in enumerate(lines, 1):
        envelope = Envelope.from_dict(json.loads(line))
        if envelope.payload_type != "application/vnd.in-toto+json":
            print(f"FAIL line {n}: payloadType {envelope.payload_type}")
            return 1
        # securesystemslib only tries keys whose keyid equals the signature's
        # (its issue 416), so give the key the envelope's keyid.
        keyid = envelope.signatures and next(iter(envelope.signatures))
        key = SSlibKey.from_crypto(public, keyid=keyid or "key")
        try:
            envelope.verify([key], 1)
        except Exception as e:  # VerificationError and friends
            print(f"FAIL line {n}: {type(e).__name__}: {e}")
            return 1
    print(f"OK {len(lines)} envelope(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
