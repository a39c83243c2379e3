import type { Config } from './config/types.js';
import { runInspect, runRollback, runScan, runSync, type InspectOptions, type RollbackOptions, type ScanOptions, type SyncOptions } from './sync/fleet.js';
import type { RunReport } from './sync/types.js';

/** One engine command, as the CLI and the Action both build it from their input. */
export type Command =
  | { name: 'sync'; options: SyncOptions }
  | { name: 'rollback'; options: RollbackOptions }
  | { name: 'verify' | 'status'; options: InspectOptions }
  | { name: 'scan'; options: ScanOptions };

/**
 * Runs one command against the fleet and returns its report. The CLI
 * (cli.ts) and the Action (main.ts) only parse their input into a
 * {@link Command} and present the report; everything between is here.
 */
export function execute(config: Config, command: Command): Promise<RunReport> {
  switch (command.name) {
    case 'sync':
      return runSync(config, command.options);
    case 'rollback':
      return runRollback(config, command.options);
    case 'scan':
      return runScan(config, command.options);
    default:
      return runInspect(config, command.name, command.options);
  }
}
