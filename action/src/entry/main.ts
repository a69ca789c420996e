import { coreIo } from '../io.ts';
import { runMain } from '../main.ts';
import { processAlive } from '../proc.ts';
import { guard } from './guard.ts';

guard('main', async () => runMain(coreIo, processAlive));
