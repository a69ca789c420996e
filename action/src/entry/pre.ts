import { installBinary } from '../binary.ts';
import { coreIo } from '../io.ts';
import { realProbe } from '../platform.ts';
import { runPre } from '../pre.ts';
import { isRoot, runProcess } from '../proc.ts';
import { guard } from './guard.ts';

guard('pre', () =>
  runPre({
    io: coreIo,
    env: process.env,
    probe: realProbe(),
    isRoot: isRoot(),
    run: runProcess,
    install: (source, dest) => installBinary(source, dest, { log: (m) => coreIo.info(m) }),
  }),
);
