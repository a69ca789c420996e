// SHA-256 of every released ciwatch binary the action may download, pinned in the action's source.
// A download whose digest differs is refused. `scripts/pin-release VERSION checksums.txt` adds a release
// (the release workflow runs it); keep the block between the markers valid JSON.

export const ARCHES = ['x86_64', 'aarch64'] as const;
export type Arch = (typeof ARCHES)[number];

/** Where released binaries live: `${RELEASE_BASE_URL}/v${version}/${assetName(arch)}`. */
export const RELEASE_BASE_URL = 'https://github.com/ciwatch/ciwatch/releases/download';

export function assetName(arch: Arch): string {
  return `ciwatch-${arch}-unknown-linux-musl`;
}

// prettier-ignore
export const CHECKSUMS: Readonly<Record<string, Readonly<Partial<Record<Arch, string>>>>> =
// BEGIN PINNED CHECKSUMS
{}
// END PINNED CHECKSUMS
;

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.+-]/).map((x) => (/^\d+$/.test(x) ? Number(x) : x));
  const pb = b.split(/[.+-]/).map((x) => (/^\d+$/.test(x) ? Number(x) : x));
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    if (x === y) continue;
    if (typeof x === 'number' && typeof y === 'number') return x - y;
    return String(x) < String(y) ? -1 : 1;
  }
  return 0;
}

/** The newest pinned release without a pre-release suffix, or null when nothing is pinned yet. */
export function defaultVersion(table: typeof CHECKSUMS = CHECKSUMS): string | null {
  const stable = Object.keys(table).filter((v) => /^\d+\.\d+\.\d+$/.test(v));
  stable.sort(compareVersions);
  return stable[stable.length - 1] ?? null;
}
