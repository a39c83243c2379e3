/** The action's entry point (bundled to dist/index.js): only runs the action. */
import { run } from './main.js';

void run();
