import * as core from '@actions/core';
import { VmSyncError } from '../errors.js';

export type ActionCommand = 'sync' | 'verify' | 'status' | 'scan';

/** Every input of action.yml, parsed and checked once. */
export interface Inputs {
  command: ActionCommand;
  config: string;
  /** Empty: the event's SHA. */
  commit: string;
  vms: string[];
  force: boolean;
  dryRun: boolean;
  githubToken: string;
  commitStatuses: boolean;
  environment: string;
  gitleaksVersion: string;
  gitleaksPath: string;
  sarifPath: string;
}

/** Reads one input; the reader is injectable for tests. */
export type InputReader = (name: string) => string;

const defaultReader: InputReader = (name) => core.getInput(name);

function bool(read: InputReader, name: string, fallback: boolean): boolean {
  const raw = read(name).trim();
  if (raw === '') return fallback;
  // The YAML 1.2 core schema booleans, as @actions/core accepts them.
  if (['true', 'True', 'TRUE'].includes(raw)) return true;
  if (['false', 'False', 'FALSE'].includes(raw)) return false;
  throw new VmSyncError('config_invalid', `input ${name} must be true or false, not '${raw}'`);
}

/**
 * Parses every input into one typed object, so the rest of the action never
 * reads an input itself. Bad values are errors that name the input.
 */
export function parseInputs(read: InputReader = defaultReader): Inputs {
  const command = (read('command').trim() || 'sync') as ActionCommand;
  if (!['sync', 'verify', 'status', 'scan'].includes(command)) {
    throw new VmSyncError('config_invalid', `input command must be sync, verify, status or scan, not '${command}'`);
  }
  const commit = read('commit').trim();
  if (commit !== '' && !/^[0-9a-fA-F]{7,40}$/.test(commit) && !/^[A-Za-z0-9._/-]+$/.test(commit)) {
    throw new VmSyncError('config_invalid', `input commit is not a commit or ref: '${commit}'`);
  }
  const vms = read('vms')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const inputs: Inputs = {
    command,
    config: read('config').trim() || 'vm-sync.yml',
    commit,
    vms,
    force: bool(read, 'force', false),
    dryRun: bool(read, 'dry-run', false),
    githubToken: read('github-token').trim(),
    commitStatuses: bool(read, 'commit-statuses', true),
    environment: read('environment').trim(),
    gitleaksVersion: read('gitleaks-version').trim() || '8.30.1',
    gitleaksPath: read('gitleaks-path').trim(),
    sarifPath: read('sarif-path').trim(),
  };
  if (inputs.dryRun && command !== 'sync') throw new VmSyncError('config_invalid', 'input dry-run only applies to command: sync');
  if (inputs.force && command !== 'sync') throw new VmSyncError('config_invalid', 'input force only applies to command: sync');
  return inputs;
}
