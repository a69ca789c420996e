import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runMain } from '../src/main.ts';
import { decodeState, encodeState, STATE_KEY, type SavedState } from '../src/state.ts';
import { FakeIo } from './helpers.ts';

const started: SavedState = {
  v: 1, phase: 'started', reason: null, failure: null, workDir: '/w', outDir: '/w/out', binary: '/run/ciwatch/bin/ciwatch-' + 'a'.repeat(64),
  sha256: 'a'.repeat(64), stateDir: '/run/ciwatch/k', token: 't', pid: 7,
  version: '0.1.0', mode: 'observe', sign: 'auto', useSudo: true, failOn: ['denied'], uploadArtifact: true, artifactName: '',
  jobSummary: true, disableSudo: false,
};

describe('main', () => {
  it('warns when the agent is gone', () => {
    const io = new FakeIo({}, { [STATE_KEY]: encodeState(started) });
    runMain(io, () => false);
    assert.match(io.messages('warning')[0] ?? '', /pid 7\) is no longer running/);
  });
  it('is quiet when the agent is alive or was never started', () => {
    const io = new FakeIo({}, { [STATE_KEY]: encodeState(started) });
    runMain(io, () => true);
    assert.equal(io.messages('warning').length, 0);
    const none = new FakeIo();
    runMain(none, () => false);
    assert.equal(none.messages('warning').length, 0);
  });
});

describe('state', () => {
  it('round-trips and rejects what it does not know', () => {
    assert.deepEqual(decodeState(encodeState(started)), started);
    assert.equal(decodeState(''), null);
    assert.equal(decodeState('not json'), null);
    assert.equal(decodeState(JSON.stringify({ ...started, v: 2 })), null);
    assert.equal(decodeState(JSON.stringify({ ...started, phase: 'running' })), null);
  });
});
