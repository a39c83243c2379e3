import fs from 'node:fs';
import type { Config, VmConfig } from '../config/types.js';
import { getErrorMessage, VmSyncError } from '../errors.js';
import { KnownHosts } from '../remote/known-hosts.js';
import { parseLockOwner } from '../remote/lock.js';
import { VmSession } from '../remote/session.js';
import { CLEANUP_MS, RemoteTarget } from '../remote/target.js';
import { selectVms } from './fleet.js';
import { mapPool } from './pool.js';
import { judge } from './unlock.js';

/** One VM's row of `vm-sync locks`. */
export interface LockRow {
  id: string;
  locked: boolean;
  /** Certainly abandoned: its deadline passed, its holder process is gone, or its record has been unreadable too long. */
  stale: boolean;
  /** Who holds it, from a vm-sync lock record; null for no lock or a record of another kind. */
  holder: { host: string; pid: number; commit: string; run: string; deadline: number } | null;
  /** The record as the VM holds it (cleaned); null when not locked. */
  record: string | null;
  /** Seconds since the lock was taken (by the VM's clock), when known. */
  age_s: number | null;
  /** Who holds it and what to do, in words. */
  detail: string;
  error: { code: string; message: string } | null;
}

async function lockOf(vm: VmConfig, config: Config, knownHosts: KnownHosts): Promise<LockRow> {
  const row: LockRow = { id: vm.id, locked: false, stale: false, holder: null, record: null, age_s: null, detail: '', error: null };
  let session: VmSession | null = null;
  try {
    session = await VmSession.open(vm, knownHosts, { connectTimeoutMs: config.sync.connectTimeoutS * 1000 });
    const probe = await new RemoteTarget(session, vm.repoPath, Date.now() + CLEANUP_MS).probe(true);
    if (!probe.lock) {
      row.detail = 'not locked';
      return row;
    }
    const { stale, who } = judge(probe, config.sync.timeoutS);
    const owner = parseLockOwner(probe.lock.record);
    row.locked = true;
    row.stale = stale;
    row.record = probe.lock.record;
    row.age_s = probe.lock.mtime === null ? null : Math.max(0, probe.now - probe.lock.mtime);
    row.holder = owner ? { host: owner.host, pid: owner.pid, commit: owner.commit, run: owner.run, deadline: owner.deadline } : null;
    row.detail = stale ? `locked by ${who}: stale, vm-sync unlock --vm ${vm.id} breaks it (the next deploy does too)` : `locked by ${who}`;
  } catch (error) {
    row.error = { code: error instanceof VmSyncError ? error.code : 'remote_command_failed', message: getErrorMessage(error) };
    row.detail = `could not read the lock: ${row.error.message}`;
  } finally {
    session?.dispose();
  }
  return row;
}

/** `vm-sync locks`: every selected VM's deploy lock and who holds it. Read-only. */
export async function runLocks(config: Config, options: { vms?: string[] } = {}): Promise<LockRow[]> {
  const vms = selectVms(config, options.vms);
  const knownHosts = new KnownHosts(fs.readFileSync(config.knownHostsPath, 'utf8'));
  return mapPool(vms, config.sync.concurrency, (vm) => lockOf(vm, config, knownHosts));
}
