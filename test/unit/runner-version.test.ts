import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkRunnerHost, compareVersions, MIN_RUNNER_VERSION, readRunnerVersion } from '../../src/doctor/runner.js';
import { renderDoctor, type DoctorReport } from '../../src/doctor/doctor.js';

/*
 * The runner-host check of vm-sync doctor against runner directories laid out
 * as the actions/runner package and its self-update leave them: a fresh
 * package (bin/ a directory), an updated one (bin -> bin.X.Y.Z, externals ->
 * externals.X.Y.Z), and one the bootstrap installed (.vm-sync-runner-version).
 */
let work: string;
beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-runner-'));
});
afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

/** The .NET manifest of Runner.Listener as a real package ships it (trimmed): third-party entries next to the runner's own. */
function deps(version: string): string {
  return JSON.stringify({
    runtimeTarget: { name: '.NETCoreApp,Version=v8.0/linux-x64' },
    targets: {
      '.NETCoreApp,Version=v8.0': {},
      '.NETCoreApp,Version=v8.0/linux-x64': { [`Runner.Listener/${version}`]: { dependencies: { 'Newtonsoft.Json': '13.0.3' } }, 'Newtonsoft.Json/13.0.3': {}, 'Runner.Common/1.0.0': {} },
    },
    libraries: { 'Newtonsoft.Json/13.0.3': { type: 'package' }, [`Runner.Listener/${version}`]: { type: 'project' }, 'Runner.Common/1.0.0': { type: 'project' } },
  });
}

function runnerDir(layout: { bin?: string; linkedBin?: string; marker?: string } = {}): string {
  const dir = path.join(work, 'actions-runner');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.sh'), '#!/bin/sh\n');
  if (layout.bin !== undefined) {
    fs.mkdirSync(path.join(dir, 'bin'));
    fs.writeFileSync(path.join(dir, 'bin', 'Runner.Listener.deps.json'), layout.bin);
  }
  if (layout.linkedBin !== undefined) {
    // What the runner's update.sh leaves: bin is a link to bin.<version>.
    fs.mkdirSync(path.join(dir, `bin.${layout.linkedBin}`));
    fs.writeFileSync(path.join(dir, `bin.${layout.linkedBin}`, 'Runner.Listener.deps.json'), deps(layout.linkedBin));
    fs.symlinkSync(path.join(dir, `bin.${layout.linkedBin}`), path.join(dir, 'bin'));
  }
  if (layout.marker !== undefined) fs.writeFileSync(path.join(dir, '.vm-sync-runner-version'), layout.marker);
  return dir;
}

describe('runner version', () => {
  test('versions compare by number, not as text', () => {
    expect(compareVersions('2.99.0', '2.329.0')).toBeLessThan(0);
    expect(compareVersions('2.329.0', '2.329.0')).toBe(0);
    expect(compareVersions('2.329.1', '2.329.0')).toBeGreaterThan(0);
    expect(compareVersions('3.0.0', '2.400.0')).toBeGreaterThan(0);
  });

  test('read from the .NET manifest, not confused by the other libraries in it', () => {
    expect(readRunnerVersion(runnerDir({ bin: deps('2.335.1') }))).toEqual({ version: '2.335.1', source: 'bin/Runner.Listener.deps.json' });
  });

  test('after a self-update the manifest is read through bin -> bin.X.Y.Z, and the stale bootstrap marker loses', () => {
    expect(readRunnerVersion(runnerDir({ linkedBin: '2.336.0', marker: '2.329.0\n' }))?.version).toBe('2.336.0');
  });

  test('the link name when the manifest is unreadable; then the bootstrap marker; then nothing', () => {
    const dir = runnerDir({ linkedBin: '2.331.0' });
    fs.writeFileSync(path.join(dir, 'bin.2.331.0', 'Runner.Listener.deps.json'), '{ not json');
    expect(readRunnerVersion(dir)).toEqual({ version: '2.331.0', source: 'the bin -> bin.2.331.0 link' });
    fs.rmSync(work, { recursive: true, force: true });
    expect(readRunnerVersion(runnerDir({ bin: '{}', marker: '2.330.0\n' }))?.version).toBe('2.330.0');
    fs.rmSync(work, { recursive: true, force: true });
    expect(readRunnerVersion(runnerDir({ bin: '{"libraries":{"Runner.Listener/latest":{}}}', marker: 'junk; rm -rf /' }))).toBeNull();
  });
});

describe('checkRunnerHost', () => {
  test('a runner at the minimum or newer is ok, and says where the version came from', () => {
    const dir = runnerDir({ bin: deps(MIN_RUNNER_VERSION) });
    const check = checkRunnerHost({ VM_SYNC_RUNNER_DIR: dir });
    expect(check).toMatchObject({ name: 'runner', status: 'ok', version: '2.329.0', dir, minimum: '2.329.0', hint: null });
    expect(check.detail).toBe(`runner 2.329.0 in ${dir} (GitHub's minimum for registration: 2.329.0; read from bin/Runner.Listener.deps.json)`);
  });

  test.each(['2.328.0', '2.99.9', '1.999.0'])('runner %s is older than the minimum: fail, with how to upgrade', (version) => {
    const dir = runnerDir({ bin: deps(version) });
    const check = checkRunnerHost({ VM_SYNC_RUNNER_DIR: dir });
    expect(check.status).toBe('fail');
    expect(check.version).toBe(version);
    expect(check.detail).toContain(`runner ${version} in ${dir} is older than 2.329.0, the oldest GitHub lets register or connect`);
    expect(check.hint).toContain('scripts/bootstrap-runner.sh install');
  });

  test('no runner: a warning with the fix, never a failure (doctor also runs off the runner host)', () => {
    const missing = checkRunnerHost({ VM_SYNC_RUNNER_DIR: path.join(work, 'nowhere') });
    expect(missing.status).toBe('warn');
    expect(missing.detail).toBe(`no GitHub Actions runner found in ${path.join(work, 'nowhere')} (VM_SYNC_RUNNER_DIR): fine if this is not the runner host`);
    expect(missing.hint).toContain('scripts/bootstrap-runner.sh install');
    expect(missing.hint).toContain('set VM_SYNC_RUNNER_DIR');
    // A directory that is not a runner (no config.sh) is not mistaken for one.
    fs.mkdirSync(path.join(work, 'other', 'bin'), { recursive: true });
    fs.writeFileSync(path.join(work, 'other', 'bin', 'Runner.Listener.deps.json'), deps('2.300.0'));
    expect(checkRunnerHost({ VM_SYNC_RUNNER_DIR: path.join(work, 'other') }).status).toBe('warn');
  });

  test('without the variable it looks where the bootstrap installs', () => {
    expect(checkRunnerHost({}).dir).toBe('/opt/actions-runner');
  });

  test('a runner whose version cannot be read: a warning naming what was looked for', () => {
    const check = checkRunnerHost({ VM_SYNC_RUNNER_DIR: runnerDir() });
    expect(check.status).toBe('warn');
    expect(check.detail).toContain('its version is unreadable (no bin/Runner.Listener.deps.json, bin.X.Y.Z link or .vm-sync-runner-version)');
  });

  test('doctor prints it once, before the VMs, with its fix, and says the runner host is not ready', () => {
    const runner = checkRunnerHost({ VM_SYNC_RUNNER_DIR: runnerDir({ bin: deps('2.320.0') }) });
    const report: DoctorReport = {
      command: 'doctor',
      ready: false,
      tree_bytes: null,
      runner_host: { ready: false, checks: [{ name: runner.name, status: runner.status, detail: runner.detail, hint: runner.hint }] },
      vms: [
        { id: 'vm01', host: 'h', ready: true, checks: [{ name: 'tcp', status: 'ok', detail: 'h:22 reachable', hint: null }] },
        { id: 'vm02', host: 'h', ready: true, checks: [{ name: 'tcp', status: 'ok', detail: 'h:22 reachable', hint: null }] },
      ],
    };
    const lines = renderDoctor(report).split('\n');
    expect(lines[0]).toMatch(/^runner host {2}FAIL {2}runner {6}runner 2\.320\.0 in .* is older than 2\.329\.0/);
    expect(lines[1]).toMatch(/^ {19}fix: upgrade the runner: /);
    expect(lines.filter((l) => l.includes('older than'))).toHaveLength(1);
    expect(lines.at(-3)).toBe('runner host: not ready (runner): every sync from it fails');
    expect(lines.at(-2)).toBe('2 of 2 VMs ready for a sync');
  });
});
