/** Program entry for `vm-sync` (bundled to dist/cli.js): only starts the CLI. */
import { runCli } from './cli.js';

void runCli();
