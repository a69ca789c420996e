// What pre hands to main and post. It is one JSON value in the step state (`core.saveState`), which the
// runner gives back to main and post as STATE_ciwatch. Post must cope with any of: no state at all (pre was
// skipped or crashed before saving), a state saying pre did not start the agent, or a started agent.

import type { Mode, SignMode } from './agent.ts';
import type { FailOn } from './inputs.ts';

export const STATE_KEY = 'ciwatch';

export type Phase = 'started' | 'not-started';

export interface SavedState {
  v: 1;
  phase: Phase;
  /** why the agent was not started (unsupported runner, refused binary, failed start) */
  reason: string | null;
  /** the category of `reason`, for fail-on (already applied at pre) */
  failure: 'unsupported' | 'agent-failure' | 'config' | null;
  workDir: string;
  outDir: string;
  /** the root-owned copy pre installed and started the agent from */
  binary: string;
  /** its pinned SHA-256, which post checks again before running it */
  sha256: string;
  /** the agent's root-only state directory, which `finish --state` names */
  stateDir: string;
  /** `finish` must show this; start was given its SHA-256 (masked in logs) */
  token: string;
  pid: number | null;
  version: string;
  mode: Mode;
  sign: SignMode;
  useSudo: boolean;
  failOn: FailOn[];
  uploadArtifact: boolean;
  artifactName: string;
  jobSummary: boolean;
  disableSudo: boolean;
}

export function encodeState(s: SavedState): string {
  return JSON.stringify(s);
}

/** Returns null for a missing or unreadable state: post then has nothing to finish. */
export function decodeState(raw: string): SavedState | null {
  if (!raw) return null;
  try {
    const v = JSON.parse(raw) as Partial<SavedState>;
    if (v.v !== 1 || (v.phase !== 'started' && v.phase !== 'not-started') || typeof v.workDir !== 'string') return null;
    return v as SavedState;
  } catch {
    return null;
  }
}
