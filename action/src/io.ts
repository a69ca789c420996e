// The few runner interactions the action needs, behind one interface so pre/main/post can be unit-tested
// with a recording fake. The real implementation is @actions/core (file commands, not hand-written files).

import * as core from '@actions/core';

export interface Io {
  getInput(name: string): string;
  getState(name: string): string;
  saveState(name: string, value: string): void;
  setOutput(name: string, value: string | number | boolean): void;
  setSecret(value: string): void;
  debug(message: string): void;
  info(message: string): void;
  notice(message: string): void;
  warning(message: string): void;
  error(message: string): void;
  setFailed(message: string): void;
  /** appends Markdown to this step's job summary */
  writeSummary(markdown: string): Promise<void>;
}

export const coreIo: Io = {
  getInput: (name) => core.getInput(name),
  getState: (name) => core.getState(name),
  saveState: (name, value) => core.saveState(name, value),
  setOutput: (name, value) => core.setOutput(name, value),
  setSecret: (value) => core.setSecret(value),
  debug: (m) => core.debug(m),
  info: (m) => core.info(m),
  notice: (m) => core.notice(m),
  warning: (m) => core.warning(m),
  error: (m) => core.error(m),
  setFailed: (m) => core.setFailed(m),
  writeSummary: async (markdown) => {
    await core.summary.addRaw(markdown, true).write();
  },
};

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
