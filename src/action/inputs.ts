import * as core from '@actions/core';
import { VmSyncError } from '../errors.js';
import { MAX_SHARDS, parseShard, type Shard } from '../config/shard.js';

export type ActionCommand = 'sync' | 'rollback' | 'verify' | 'status' | 'scan' | 'report';

const COMMANDS: readonly ActionCommand[] = ['sync', 'rollback', 'verify', 'status', 'scan', 'report'];

/** The longest `lock-wait`: one day. */
export const MAX_LOCK_WAIT_S = 86400;

/** Every input of action.yml, parsed and checked once. */
export interface Inputs {
  command: ActionCommand;
  config: string;
  /** Empty: the event's SHA. */
  commit: string;
  /** rollback: the commit to go back to (7-40 hex digits or a ref name); empty: each VM's previous release. */
  to: string;
  /** sync and rollback: how long to keep retrying a VM locked by another live run, in seconds (0: fail at once). */
  lockWaitS: number;
  vms: string[];
  /** sync, rollback, verify, status: only this shard's VMs. */
  shard: Shard | null;
  /** Where to write the results document ('' = nowhere). */
  resultsPath: string;
  /** report: the shards' results files or directories. */
  results: string;
  /** report: how many shards there were (null: as the results files say). */
  shards: number | null;
  /** sync: an earlier job of this run scanned the commit (sharded deploys scan once). */
  skipScan: boolean;
  force: boolean;
  dryRun: boolean;
  /** verify only: also compare every file each VM serves with its commit's tree. */
  deep: boolean;
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

/** A commit or ref as an input may name it: 7-40 hex digits, or a ref name git would accept (roughly). */
function isCommitOrRef(value: string): boolean {
  if (/^[0-9a-fA-F]{7,40}$/.test(value)) return true;
  return (
    /^[A-Za-z0-9_][A-Za-z0-9._/-]*$/.test(value) &&
    !value.includes('..') &&
    !value.includes('//') &&
    !value.includes('/.') &&
    !/[/.]$/.test(value) &&
    !value.endsWith('.lock')
  );
}

/** Whole seconds from 0 to {@link MAX_LOCK_WAIT_S}; empty: 0. */
function lockWait(read: InputReader): number {
  const raw = read('lock-wait').trim();
  if (raw === '') return 0;
  const seconds = /^[0-9]{1,6}$/.test(raw) ? Number(raw) : NaN;
  if (!(seconds <= MAX_LOCK_WAIT_S)) {
    throw new VmSyncError('config_invalid', `input lock-wait must be whole seconds from 0 to ${MAX_LOCK_WAIT_S}, not '${raw}'`);
  }
  return seconds;
}

/** report: N, a whole number from 1 to {@link MAX_SHARDS}; empty: null. */
function shardCount(read: InputReader): number | null {
  const raw = read('shards').trim();
  if (raw === '') return null;
  const count = /^[0-9]{1,3}$/.test(raw) ? Number(raw) : NaN;
  if (!(count >= 1 && count <= MAX_SHARDS)) throw new VmSyncError('config_invalid', `input shards must be a whole number from 1 to ${MAX_SHARDS}, not '${raw}'`);
  return count;
}

/**
 * Parses every input into one typed object, so the rest of the action never
 * reads an input itself. Bad values are errors that name the input.
 */
export function parseInputs(read: InputReader = defaultReader): Inputs {
  const command = (read('command').trim() || 'sync') as ActionCommand;
  if (!COMMANDS.includes(command)) {
    throw new VmSyncError('config_invalid', `input command must be sync, rollback, verify, status, scan or report, not '${command}'`);
  }
  const commit = read('commit').trim();
  if (commit !== '' && !/^[0-9a-fA-F]{7,40}$/.test(commit) && !/^[A-Za-z0-9._/-]+$/.test(commit)) {
    throw new VmSyncError('config_invalid', `input commit is not a commit or ref: '${commit}'`);
  }
  const to = read('to').trim();
  if (to !== '' && !isCommitOrRef(to)) {
    throw new VmSyncError('config_invalid', `input to must be a commit (7 to 40 hex digits) or a ref name, not '${to}'`);
  }
  if (to !== '' && command !== 'rollback') {
    throw new VmSyncError('config_invalid', `input to only applies to command: rollback (command is ${command}); for sync use input commit`);
  }
  if (commit !== '' && command === 'rollback') {
    throw new VmSyncError('config_invalid', 'input commit does not apply to command: rollback; name the release to go back to with input to');
  }
  const vms = read('vms')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const inputs: Inputs = {
    command,
    config: read('config').trim() || 'vm-sync.yml',
    commit,
    to,
    lockWaitS: lockWait(read),
    vms,
    shard: read('shard').trim() === '' ? null : parseShard(read('shard'), 'input shard'),
    resultsPath: read('results-path').trim(),
    results: read('results').trim(),
    shards: shardCount(read),
    skipScan: bool(read, 'skip-scan', false),
    force: bool(read, 'force', false),
    dryRun: bool(read, 'dry-run', false),
    deep: bool(read, 'deep', false),
    githubToken: read('github-token').trim(),
    commitStatuses: bool(read, 'commit-statuses', true),
    environment: read('environment').trim(),
    gitleaksVersion: read('gitleaks-version').trim() || '8.30.1',
    gitleaksPath: read('gitleaks-path').trim(),
    sarifPath: read('sarif-path').trim(),
  };
  if (inputs.shard && !['sync', 'rollback', 'verify', 'status'].includes(command)) throw new VmSyncError('config_invalid', 'input shard only applies to command: sync, rollback, verify or status');
  if (command === 'report' && inputs.results === '') throw new VmSyncError('config_invalid', 'command: report needs input results: the directory the shards\' results artifacts were downloaded to');
  if (command !== 'report' && (inputs.results !== '' || inputs.shards !== null)) throw new VmSyncError('config_invalid', 'inputs results and shards only apply to command: report');
  if (inputs.skipScan && command !== 'sync') throw new VmSyncError('config_invalid', 'input skip-scan only applies to command: sync');
  if (inputs.dryRun && command !== 'sync') throw new VmSyncError('config_invalid', 'input dry-run only applies to command: sync');
  if (inputs.deep && command !== 'verify') throw new VmSyncError('config_invalid', 'input deep only applies to command: verify');
  if (inputs.force && command !== 'sync') throw new VmSyncError('config_invalid', 'input force only applies to command: sync');
  if (inputs.lockWaitS > 0 && command !== 'sync' && command !== 'rollback') {
    throw new VmSyncError('config_invalid', 'input lock-wait only applies to command: sync or rollback');
  }
  return inputs;
}
