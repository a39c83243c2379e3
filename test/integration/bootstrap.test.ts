import { execFileSync, spawn } from 'node:child_process';
import { jumpKeyFile } from '../helpers/jump-net.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { exitWhileSampling } from '../helpers/processes.js';
import { World } from '../helpers/world.js';

/*
 * scripts/bootstrap-runner.sh, the real script, run as root against a
 * throwaway root directory (--root), a loopback HTTP server standing in for
 * GitHub (tokens, release downloads) and a runner tarball built here whose
 * config.sh / svc.sh record their arguments. systemctl is a fake on PATH.
 * The host-key pinning talks to real sshd VMs.
 */
const isRoot = process.getuid?.() === 0;
const maybe = isRoot ? describe : describe.skip;
const SCRIPT = path.join(process.cwd(), 'scripts', 'bootstrap-runner.sh');
const PAT = `github_pat_${crypto.randomBytes(24).toString('hex')}`;
const REG_TOKEN = `AREG${crypto.randomBytes(16).toString('hex').toUpperCase()}`;
const REMOVE_TOKEN = `AREM${crypto.randomBytes(16).toString('hex').toUpperCase()}`;

let work: string;
let world: World;
let server: http.Server;
let baseUrl: string;
const requests: Array<{ method: string; path: string; auth: string | null }> = [];
const files = new Map<string, Buffer>();
let runnerSha: string;
let gitleaksSha: string;
let records: string;
let fakeBin: string;

function tarOf(dir: string): Buffer {
  return execFileSync('tar', ['-czf', '-', '-C', dir, '.']);
}

/** A runner package whose scripts record every call (arguments, uid, token presence) as JSON lines. */
function buildRunnerTarball(): Buffer {
  const dir = fs.mkdtempSync(path.join(work, 'runner-src-'));
  const record = `printf '{"script":"%s","uid":%s,"token":"%s","args":"%s"}\\n' "$(basename "$0")" "$(id -u)" "\${ACTIONS_RUNNER_INPUT_TOKEN:-}" "$*" >> ${records}/calls.jsonl`;
  fs.writeFileSync(
    path.join(dir, 'config.sh'),
    // It lingers a moment, like the real one, so the process-list sampler sees its command line.
    `#!/bin/sh\n${record}\nsleep 0.3\ncase "$1" in\n  remove) rm -f .runner ;;\n  *) [ -n "$ACTIONS_RUNNER_INPUT_TOKEN" ] || { echo "no token" >&2; exit 1; }; echo '{"agentName":"x"}' > .runner ;;\nesac\n`,
    { mode: 0o755 },
  );
  fs.writeFileSync(
    path.join(dir, 'svc.sh'),
    `#!/bin/sh\n${record}\ncase "$1" in\n  install) echo actions.runner.acme-app.vm04.service > .service ;;\n  start) touch ${records}/active ;;\n  stop) rm -f ${records}/active ;;\n  uninstall) rm -f .service ;;\nesac\n`,
    { mode: 0o755 },
  );
  fs.mkdirSync(path.join(dir, 'bin'));
  fs.writeFileSync(path.join(dir, 'bin', 'Runner.Listener'), 'binary\n');
  return tarOf(dir);
}

function buildGitleaksTarball(): Buffer {
  const dir = fs.mkdtempSync(path.join(work, 'gitleaks-src-'));
  fs.writeFileSync(path.join(dir, 'gitleaks'), '#!/bin/sh\necho "8.30.1"\n', { mode: 0o755 });
  return execFileSync('tar', ['-czf', '-', '-C', dir, 'gitleaks']);
}

/** A fresh throwaway root: minimal /etc user databases, systemd's run directory. */
function makeRoot(): string {
  const root = fs.mkdtempSync(path.join(work, 'root-'));
  fs.mkdirSync(path.join(root, 'etc'));
  fs.mkdirSync(path.join(root, 'run', 'systemd', 'system'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
  fs.writeFileSync(path.join(root, 'etc', 'group'), 'root:x:0:\nsudo:x:27:\ndocker:x:998:\n');
  fs.writeFileSync(path.join(root, 'etc', 'shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o640 });
  fs.writeFileSync(path.join(root, 'etc', 'gshadow'), 'root:*::\nsudo:*::\ndocker:*::\n', { mode: 0o640 });
  return root;
}

interface ScriptRun {
  code: number | null;
  out: string;
  /** Every process command line seen while the script ran. */
  processes: string[];
}

/** Runs the script, sampling the process list every 20 ms while it runs. */
async function bootstrap(args: string[], env: Record<string, string> = { GITHUB_PAT: PAT }): Promise<ScriptRun> {
  const child = spawn('bash', [SCRIPT, ...args], {
    env: { PATH: `${fakeBin}:${process.env.PATH}`, HOME: process.env.HOME ?? '/root', GITHUB_API_URL: `${baseUrl}/api`, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const { code, processes } = await exitWhileSampling(child, 20);
  return { code, out, processes };
}

function calls(): Array<{ script: string; uid: number; token: string; args: string }> {
  const file = path.join(records, 'calls.jsonl');
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
}

function expectNoToken(run: ScriptRun): void {
  // The sampler really saw the script and its children (otherwise this check would prove nothing).
  expect(run.processes.some((p) => p.includes('bootstrap-runner.sh'))).toBe(true);
  for (const secret of [PAT, REG_TOKEN, REMOVE_TOKEN]) {
    expect(run.out).not.toContain(secret);
    expect(run.processes.some((p) => p.includes(secret))).toBe(false);
  }
}

maybe('bootstrap-runner.sh', () => {
  let root: string;
  let configPath: string;
  const common = (): string[] => [
    '--url', 'https://github.com/acme/app',
    '--name', 'vm04',
    '--root', root,
    '--runner-url-base', `${baseUrl}/runner`,
    '--runner-sha256', runnerSha,
    '--gitleaks-url-base', `${baseUrl}/gitleaks`,
    '--gitleaks-sha256', gitleaksSha,
  ];

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-bootstrap-'));
    records = path.join(work, 'records');
    fs.mkdirSync(records, { mode: 0o777 });
    fs.chmodSync(records, 0o777);
    fs.chmodSync(work, 0o755);
    fakeBin = path.join(work, 'bin');
    fs.mkdirSync(fakeBin);
    // systemctl is-active --quiet UNIT: active once the fake svc.sh started it.
    fs.writeFileSync(path.join(fakeBin, 'systemctl'), `#!/bin/sh\n[ "$1" = is-active ] && [ -e ${records}/active ]\n`, { mode: 0o755 });
    const runnerTar = buildRunnerTarball();
    const gitleaksTar = buildGitleaksTarball();
    runnerSha = crypto.createHash('sha256').update(runnerTar).digest('hex');
    gitleaksSha = crypto.createHash('sha256').update(gitleaksTar).digest('hex');
    files.set('/runner/v2.329.0/actions-runner-linux-x64-2.329.0.tar.gz', runnerTar);
    files.set('/gitleaks/v8.30.1/gitleaks_8.30.1_linux_x64.tar.gz', gitleaksTar);
    server = http.createServer((req, res) => {
      requests.push({ method: req.method ?? '', path: req.url ?? '', auth: (req.headers.authorization as string) ?? null });
      const file = files.get(req.url ?? '');
      if (file) return void res.writeHead(200).end(file);
      if (req.method === 'POST' && req.url === '/api/repos/acme/app/actions/runners/registration-token') {
        return void res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ token: REG_TOKEN, expires_at: '2026-11-21T23:59:00Z' }));
      }
      if (req.method === 'POST' && req.url === '/api/repos/acme/app/actions/runners/remove-token') {
        return void res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ token: REMOVE_TOKEN, expires_at: '2026-11-21T23:59:00Z' }));
      }
      res.writeHead(404).end('{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    world = await World.create(['vm01', 'vm02', 'bastion']);
    configPath = path.join(work, 'vm-sync.yml');
    // 'bastion' is a jump host (not a VM), with one VM behind it that this host cannot reach.
    const config = fs
      .readFileSync(world.configPath, 'utf8')
      .replace(/key_storage_path: .*/, 'key_storage_path: /etc/vm-sync/keys')
      .replace(/known_hosts: .*/, 'known_hosts: /etc/vm-sync/keys/known_hosts')
      .replace(/^ {2}bastion: .*\n/m, `  vm09: { ip: 10.255.0.9, ssh_user: deploy, jump: bastion }\n`);
    fs.writeFileSync(configPath, `jump_hosts:\n  bastion: { ip: 127.0.0.1, ssh_user: ${world.fleet.user}, ssh_port: ${world.vm('bastion').port} }\n${config}`);
    root = makeRoot();
  });
  afterAll(async () => {
    world?.destroy();
    await new Promise((resolve) => server?.close(resolve));
    fs.rmSync(work, { recursive: true, force: true });
  });

  const hostFingerprint = (id: string): string =>
    execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', path.join(world.vm(id).dir, 'ssh_host_ed25519_key.pub')], { encoding: 'utf8' }).split(' ')[1];

  test('a credential on the command line is refused', async () => {
    const run = await bootstrap(['install', '--token', 'abc', '--url', 'https://github.com/acme/app']);
    expect(run.code).toBe(1);
    expect(run.out).toContain('credentials are never taken from flags');
  });

  test('a wrong runner checksum is refused and leaves nothing half-installed', async () => {
    const other = makeRoot();
    const run = await bootstrap(['install', ...common().map((a) => (a === root ? other : a === runnerSha ? 'f'.repeat(64) : a))]);
    expect(run.code).toBe(1);
    expect(run.out).toMatch(/checksum mismatch for .*actions-runner-linux-x64-2\.329\.0\.tar\.gz: expected f{64}, got [0-9a-f]{64}\. Nothing was installed\./);
    expect(fs.readdirSync(path.join(other, 'opt', 'actions-runner'))).toEqual([]);
    expect(fs.readdirSync(path.join(other, 'opt')).filter((n) => n.includes('extract'))).toEqual([]);
    expect(calls()).toEqual([]);
  });

  test('install: user, verified runner, registration with labels, service, key store and pinned host keys', async () => {
    const run = await bootstrap(['install', ...common(), '--labels', 'linux,vm-sync', '--config', configPath, '--host-fingerprint', `vm01=${hostFingerprint('vm01')}`, '--trust-on-first-use']);
    expect(run.out).toMatch(/done: /);
    expect(run.code).toBe(0);

    const passwd = fs.readFileSync(path.join(root, 'etc', 'passwd'), 'utf8');
    const entry = passwd.split('\n').find((l) => l.startsWith('gh-runner:'));
    expect(entry).toBeDefined();
    const uid = Number(entry?.split(':')[2]);
    expect(uid).toBeGreaterThan(0);
    expect(fs.readFileSync(path.join(root, 'etc', 'group'), 'utf8')).not.toMatch(/^(sudo|docker):.*gh-runner/m);

    // Registration: as the runner user, the token in the environment only, labels including vm-sync.
    const recorded = calls();
    expect(recorded.map((c) => [c.script, c.args])).toEqual([
      ['config.sh', '--unattended --url https://github.com/acme/app --name vm04 --labels vm-sync,linux --work _work --replace'],
      ['svc.sh', 'install gh-runner'],
      ['svc.sh', 'start'],
    ]);
    expect(recorded[0].uid).toBe(uid);
    expect(recorded[0].token).toBe(REG_TOKEN);
    const tokenCall = requests.find((r) => r.path === '/api/repos/acme/app/actions/runners/registration-token');
    expect(tokenCall).toEqual({ method: 'POST', path: '/api/repos/acme/app/actions/runners/registration-token', auth: `Bearer ${PAT}` });

    // Files, modes, owners.
    const runnerDir = path.join(root, 'opt', 'actions-runner');
    expect(fs.statSync(path.join(runnerDir, 'config.sh')).uid).toBe(uid);
    expect(fs.readFileSync(path.join(runnerDir, '.vm-sync-runner-version'), 'utf8')).toBe('2.329.0\n');
    expect(fs.statSync(path.join(root, 'usr', 'local', 'bin', 'gitleaks')).mode & 0o777).toBe(0o755);
    const keyDir = path.join(root, 'etc', 'vm-sync', 'keys');
    expect(fs.statSync(keyDir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(keyDir).uid).toBe(uid);
    for (const id of ['vm01', 'vm02']) {
      const key = path.join(keyDir, `id_ed25519_${id}`);
      expect(fs.statSync(key).mode & 0o777).toBe(0o600);
      expect(fs.statSync(key).uid).toBe(uid);
      expect(run.out).toContain(`public key for ${id}`);
    }
    // Pinned host keys are exactly the VMs' own.
    const pinned = fs.readFileSync(path.join(keyDir, 'known_hosts'), 'utf8');
    for (const id of ['vm01', 'vm02']) {
      const pub = fs.readFileSync(path.join(world.vm(id).dir, 'ssh_host_ed25519_key.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
      expect(pinned).toContain(`[127.0.0.1]:${world.vm(id).port} ${pub}`);
    }
    expect(run.out).toContain(`pinned vm01 (${hostFingerprint('vm01')}, matches --host-fingerprint)`);
    expect(run.out).toContain(`pinned vm02 on first use: ${hostFingerprint('vm02')}`);
    // The jump host: its own key and its pinned host key; the VM behind it cannot be scanned from here, and the output says how to pin it.
    const jumpKey = path.join(keyDir, jumpKeyFile('bastion'));
    expect([fs.statSync(jumpKey).mode & 0o777, fs.statSync(jumpKey).uid]).toEqual([0o600, uid]);
    const bastionPub = fs.readFileSync(path.join(world.vm('bastion').dir, 'ssh_host_ed25519_key.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
    expect(pinned).toContain(`[127.0.0.1]:${world.vm('bastion').port} ${bastionPub}`);
    expect(run.out).toContain(`pinned jump:bastion on first use: ${hostFingerprint('bastion')}`);
    expect(run.out).toContain("vm09 is behind jump host bastion, which this host cannot scan through: on bastion run 'ssh-keyscan -t ed25519 -p 22 10.255.0.9'");
    expect(pinned).not.toContain('10.255.0.9');
    expect(fs.existsSync(path.join(keyDir, 'id_ed25519_vm09'))).toBe(true);
    expectNoToken(run);
  });

  test('a second install with the same arguments changes nothing; changed labels are applied', async () => {
    const before = calls().length;
    const downloads = requests.filter((r) => r.path.endsWith('.tar.gz')).length;
    const again = await bootstrap(['install', ...common(), '--labels', 'linux,vm-sync', '--config', configPath, '--host-fingerprint', `vm01=${hostFingerprint('vm01')}`, '--trust-on-first-use']);
    expect(again.code).toBe(0);
    expect(again.out).toContain('unchanged: runner vm04 is installed, registered (vm-sync,linux) and active');
    expect(calls().length).toBe(before);
    expect(requests.filter((r) => r.path.endsWith('.tar.gz')).length).toBe(downloads);

    const relabel = await bootstrap(['install', ...common(), '--labels', 'linux,deploy']);
    expect(relabel.code).toBe(0);
    expect(relabel.out).toContain('registration settings changed: re-registering vm04');
    expect(calls().slice(before).map((c) => [c.script, c.args])).toEqual([
      ['config.sh', 'remove --local'],
      ['config.sh', '--unattended --url https://github.com/acme/app --name vm04 --labels vm-sync,linux,deploy --work _work --replace'],
    ]);
    expectNoToken(again);
    expectNoToken(relabel);
  });

  test('a host key that does not match the given fingerprint is refused', async () => {
    const other = makeRoot();
    const run = await bootstrap(['install', ...common().map((a) => (a === root ? other : a)), '--config', configPath, '--host-fingerprint', `jump:bastion=${hostFingerprint('bastion')}`, '--host-fingerprint', 'vm01=SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA']);
    expect(run.code).toBe(1);
    expect(run.out).toContain(`vm01 offers ${hostFingerprint('vm01')}, not the expected SHA256:AAAA`);
  });

  test('status, then uninstall with a fresh remove token, deleting user and directory', async () => {
    const status = await bootstrap(['status', '--root', root]);
    expect(status.code).toBe(0);
    expect(status.out).toContain('service active');

    const before = calls().length;
    const run = await bootstrap(['uninstall', '--url', 'https://github.com/acme/app', '--root', root, '--delete-user', '--delete-dir']);
    expect(run.code).toBe(0);
    const recorded = calls().slice(before);
    expect(recorded.map((c) => [c.script, c.args])).toEqual([
      ['svc.sh', 'stop'],
      ['svc.sh', 'uninstall'],
      ['config.sh', 'remove --unattended'],
    ]);
    expect(recorded[2].token).toBe(REMOVE_TOKEN);
    expect(fs.existsSync(path.join(root, 'opt', 'actions-runner'))).toBe(false);
    expect(fs.readFileSync(path.join(root, 'etc', 'passwd'), 'utf8')).not.toContain('gh-runner');
    expectNoToken(run);
  });
});

if (!isRoot) test('bootstrap tests need root (they create users in a throwaway root)', () => undefined);
