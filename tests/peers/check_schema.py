"""Validates predicates against docs/predicate.schema.json (JSON Schema 2020-12).

    python check_schema.py SCHEMA BUNDLE...

Each bundle's DSSE payload must be a statement whose predicate validates.
Exit 0 and "OK" on success; exit 1 and every error otherwise.
"""
import base64
import json
import sys

from jsonschema import Draft202012Validator, FormatChecker


def main(schema_path: str, bundles: list[str]) -> int:
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    failed = False
    for path in bundles:
        with open(path, encoding="utf-8") as f:
            bundle = json.load(f)
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        for error in validator.iter_errors(statement["predicate"]):
            failed = True
            print(f"FAIL {path}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
    if not failed:
        print(f"OK {len(bundles)} predicate(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
