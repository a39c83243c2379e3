import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { RunReport } from '../../src/sync/types.js';
import { World } from '../helpers/world.js';

/*
 * 100 real sshd VMs on loopback, one runner host: a full sync, a no-op and a
 * verify through the committed CLI bundle, each VM checked for the commit it
 * serves. Prints the wall time and the vm-sync process's peak RSS of each run
 * (a measurement for the log, not a timed assertion: scripts/bench.mjs holds
 * the performance targets).
 */
const COUNT = 100;
const ids = Array.from({ length: COUNT }, (_, i) => `vm${String(i + 1).padStart(3, '0')}`);
let world: World;

beforeAll(async () => {
  world = await World.create(ids);
  // One runner host reaching every VM at once, as a fleet of this size is meant to be run.
  const config = fs.readFileSync(world.configPath, 'utf8');
  expect(config).toContain('  concurrency: 8\n');
  fs.writeFileSync(world.configPath, config.replace('  concurrency: 8\n', '  concurrency: 100\n'));
}, 180_000);
afterAll(() => world?.destroy());

/** Runs dist/cli.js as its own process; its peak RSS is read by Node itself at exit (getrusage, children excluded). */
function cli(args: string[]): { code: number; report: RunReport; seconds: number; peakMb: number } {
  const rssFile = path.join(world.dir, 'maxrss');
  const started = process.hrtime.bigint();
  let stdout: string;
  let code = 0;
  try {
    // `-e` keeps argv[1] as the first extra argument, so a placeholder stands for the script path the CLI skips.
    stdout = execFileSync(
      process.execPath,
      ['-e', "process.on('exit', () => require('fs').writeFileSync(process.env.RSS_FILE, String(process.resourceUsage().maxRSS))); require(process.env.CLI_JS);", 'cli', ...args, '--config', world.configPath, '--json'],
      { encoding: 'utf8', env: { ...process.env, RSS_FILE: rssFile, CLI_JS: path.join(process.cwd(), 'dist', 'cli.js') }, maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] },
    );
  } catch (error) {
    const failed = error as { status: number; stdout: string };
    code = failed.status;
    stdout = failed.stdout;
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const peakMb = Number(fs.readFileSync(rssFile, 'utf8')) / 1024;
  return { code, report: JSON.parse(stdout) as RunReport, seconds, peakMb };
}

test('100 VMs: full sync, no-op, verify; every VM serves the commit', () => {
  const sha = world.ws.commit(Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`src/file${i}.txt`, `content ${i}\n`.repeat(50)])), 'a tree for 100 VMs');
  world.ws.push();
  const lines: string[] = [];

  const full = cli(['sync']);
  expect(full.code).toBe(0);
  expect(full.report.vms.map((vm) => [vm.id, vm.result, vm.action, vm.rev_after])).toEqual(ids.map((id) => [id, 'success', 'deploy', sha]));
  for (const id of ids) expect(world.sentinel(id)).toBe(`${sha}\n`);
  lines.push(`full sync: ${full.seconds.toFixed(1)} s, peak RSS ${full.peakMb.toFixed(0)} MB`);

  const noop = cli(['sync']);
  expect(noop.code).toBe(0);
  expect(noop.report.scan).toBeNull(); // every VM recorded on the commit: nothing exported, nothing scanned
  expect(noop.report.vms.map((vm) => [vm.id, vm.result, vm.action, vm.bytes_sent])).toEqual(ids.map((id) => [id, 'success', 'none', 0]));
  lines.push(`no-op sync: ${noop.seconds.toFixed(1)} s, peak RSS ${noop.peakMb.toFixed(0)} MB`);

  const verify = cli(['verify']);
  expect(verify.code).toBe(0);
  expect(verify.report.vms.every((vm) => vm.verified && vm.rev_after === sha)).toBe(true);
  expect(verify.report.vms).toHaveLength(COUNT);
  lines.push(`verify: ${verify.seconds.toFixed(1)} s, peak RSS ${verify.peakMb.toFixed(0)} MB`);

  console.log(`${COUNT} VMs on one runner host (loopback, ${execFileSync('nproc', { encoding: 'utf8' }).trim()} cores):\n${lines.join('\n')}`);
}, 600_000);
