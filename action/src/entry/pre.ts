import { join } from 'node:path';
import { installBinary } from '../binary.ts';
import { installRootCopy } from '../install.ts';
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
    install: async (source, workDir) => {
      const download = join(workDir, 'bin', 'ciwatch');
      await installBinary(source, download, { log: (m) => coreIo.info(m) });
      return installRootCopy(download, source.sha256, runProcess, isRoot());
    },
  }),
);
