// main: the agent is already recording; only a cheap liveness check, so a dead agent shows up in the log
// next to the step that ran before it died.

import type { Io } from './io.ts';
import { decodeState, STATE_KEY } from './state.ts';

export function runMain(io: Io, alive: (pid: number) => boolean): void {
  const state = decodeState(io.getState(STATE_KEY));
  if (!state || state.phase !== 'started' || state.pid === null) {
    io.info('ciwatch is not recording in this job (see the pre step).');
    return;
  }
  if (alive(state.pid)) io.info(`ciwatch is recording (pid ${state.pid}); the trace is sealed in the post step.`);
  else io.warning(`The ciwatch agent (pid ${state.pid}) is no longer running; the post step will report an incomplete trace.`);
}
