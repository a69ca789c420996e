// A small runtime validator for the JSON that `ciwatch start` and `ciwatch finish` print.
// The agent is a separate program released on its own schedule: its output is checked field by field,
// unknown fields are ignored (forward compatible), and a missing or mistyped field is reported with its
// JSON path, so a contract change fails loudly in one place (agent.ts) instead of deep in the summary code.

export class ContractError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContractError';
  }
}

export type Validator<T> = (value: unknown, path: string) => T;

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  return `${typeof value} ${JSON.stringify(value)}`.slice(0, 60);
}

function fail(path: string, expected: string, value: unknown): never {
  throw new ContractError(`${path}: expected ${expected}, got ${describe(value)}`);
}

export const str: Validator<string> = (v, p) => (typeof v === 'string' ? v : fail(p, 'a string', v));

export const bool: Validator<boolean> = (v, p) => (typeof v === 'boolean' ? v : fail(p, 'a boolean', v));

export const count: Validator<number> = (v, p) =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : fail(p, 'a non-negative integer', v);

export const port: Validator<number> = (v, p) =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 65535 ? v : fail(p, 'a port number (0-65535)', v);

export function literal<T extends string>(...allowed: T[]): Validator<T> {
  return (v, p) =>
    typeof v === 'string' && (allowed as string[]).includes(v) ? (v as T) : fail(p, `one of ${allowed.join(', ')}`, v);
}

export function nullable<T>(inner: Validator<T>): Validator<T | null> {
  return (v, p) => (v === null ? null : inner(v, p));
}

/** Absent or null both read as null: for fields a newer agent may drop. */
export function optional<T>(inner: Validator<T>): Validator<T | null> {
  return (v, p) => (v === null || v === undefined ? null : inner(v, p));
}

export function array<T>(inner: Validator<T>): Validator<T[]> {
  return (v, p) => {
    if (!Array.isArray(v)) fail(p, 'an array', v);
    return v.map((item, i) => inner(item, `${p}[${i}]`));
  };
}

/** A plain JSON object, returned as is (for fields whose shape is open, such as denied events). */
export const record: Validator<Record<string, unknown>> = (v, p) =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(p, 'an object', v);

type Shape = Record<string, Validator<unknown>>;
type Out<S extends Shape> = { [K in keyof S]: ReturnType<S[K]> };

/** An object with at least these fields; other fields are kept but not checked. */
export function object<S extends Shape>(shape: S): Validator<Out<S> & Record<string, unknown>> {
  return (v, p) => {
    const o = record(v, p);
    const out: Record<string, unknown> = { ...o };
    for (const [key, check] of Object.entries(shape)) {
      out[key] = check(o[key], `${p}.${key}`);
    }
    return out as Out<S> & Record<string, unknown>;
  };
}
