import { artifactUploader } from '../artifact.ts';
import { rootBinaryProblem } from '../install.ts';
import { coreIo } from '../io.ts';
import { runPost } from '../post.ts';
import { runProcess } from '../proc.ts';
import { guard } from './guard.ts';

guard('post', () => runPost({ io: coreIo, env: process.env, run: runProcess, upload: artifactUploader, checkBinary: rootBinaryProblem }));
