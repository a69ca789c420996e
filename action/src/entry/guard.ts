// Shared by the three entry points: a rejected promise nobody awaited must not end the step silently
// (Node 15+ terminates on it), and an unexpected exception must say that it came from ciwatch.

import * as core from '@actions/core';

export function guard(stage: string, body: () => Promise<void>): void {
  process.on('unhandledRejection', (reason) => {
    core.warning(`ciwatch ${stage}: unhandled promise rejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
  });
  body().catch((e: unknown) => {
    core.setFailed(`ciwatch ${stage} failed unexpectedly: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  });
}
