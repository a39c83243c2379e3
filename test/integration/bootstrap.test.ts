import { execFileSync, spawn, spawnSync } from 'node:child_process';
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
 * config.sh / svc.sh record their arguments and whose externals/node24 is the
 * real Node 24. apt-get, systemctl, useradd and userdel on PATH are stubs that
 * record any call: with --root, none may run. The host-key pinning talks to
 * real sshd VMs.
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
/** A PATH directory with only the tools the vm-sync wrapper needs (no node). */
let toolsBin: string;
let hostPasswd: string;
const NODE24 = process.execPath;
const HOST_COMMANDS = ['apt-get', 'systemctl', 'useradd', 'userdel', 'groupadd'];

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
  // The .NET manifest the real package ships, which carries its version.
  fs.writeFileSync(
    path.join(dir, 'bin', 'Runner.Listener.deps.json'),
    JSON.stringify({ targets: { '.NETCoreApp,Version=v8.0/linux-x64': { 'Runner.Listener/2.329.0': {}, 'Newtonsoft.Json/13.0.3': {} } }, libraries: { 'Runner.Listener/2.329.0': { type: 'project' } } }),
  );
  // The runner's own Node, as actions/runner lays it out (externals/node24/bin/node), and a musl build beside it.
  fs.mkdirSync(path.join(dir, 'externals', 'node24', 'bin'), { recursive: true });
  fs.copyFileSync(NODE24, path.join(dir, 'externals', 'node24', 'bin', 'node'));
  fs.chmodSync(path.join(dir, 'externals', 'node24', 'bin', 'node'), 0o755);
  fs.mkdirSync(path.join(dir, 'externals', 'node24_alpine', 'bin'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'externals', 'node24_alpine', 'bin', 'node'), `#!/bin/sh\necho alpine >> ${records}/node-used\nexit 9\n`, { mode: 0o755 });
  return execFileSync('tar', ['-c', '-I', 'gzip -1', '-f', '-', '-C', dir, '.'], { maxBuffer: 512 * 1024 * 1024 });
}

function buildGitleaksTarball(): Buffer {
  const dir = fs.mkdtempSync(path.join(work, 'gitleaks-src-'));
  fs.writeFileSync(path.join(dir, 'gitleaks'), '#!/bin/sh\necho "8.30.1"\n', { mode: 0o755 });
  return execFileSync('tar', ['-czf', '-', '-C', dir, 'gitleaks']);
}

/** A fresh throwaway root: minimal /etc user databases, systemd's run directory. */
function makeRoot(): string {
  const root = fs.mkdtempSync(path.join(work, 'root-'));
  // The runner user must reach the tree's files, as on a real host.
  fs.chmodSync(root, 0o755);
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

/** Every file, directory and link under `dir` with type, mode, owner, mtime, content hash or link target. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    const st = fs.lstatSync(p);
    const rel = path.relative(dir, p) || '.';
    const what = st.isSymbolicLink()
      ? `link ${fs.readlinkSync(p)}`
      : st.isFile()
        ? `file ${crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex')}`
        : 'dir';
    out.push(`${rel} ${what} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.mtimeMs}`);
    if (st.isDirectory()) for (const name of fs.readdirSync(p).sort()) walk(path.join(p, name));
  };
  walk(dir);
  return out;
}

/** Calls of the host-level stubs (apt-get, systemctl, useradd, ...). */
function hostCommands(): string[] {
  const file = path.join(records, 'host-commands');
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : [];
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the installed `vm-sync` from the tree, as `uid` (default: the runner user), with PATH = the tree's bin + `extraPath`. */
function vmSync(root: string, args: string[], options: { uid?: number; path?: string; cwd?: string } = {}): Run {
  const uid = options.uid ?? runnerUid(root);
  const result = spawnSync('/usr/bin/setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--', 'vm-sync', ...args], {
    env: { PATH: `${path.join(root, 'usr', 'local', 'bin')}:${options.path ?? toolsBin}`, HOME: path.join(root, 'opt', 'actions-runner'), LANG: 'C.UTF-8' },
    cwd: options.cwd ?? work,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function runnerUid(root: string): number {
  const entry = fs.readFileSync(path.join(root, 'etc', 'passwd'), 'utf8').split('\n').find((l) => l.startsWith('gh-runner:'));
  if (!entry) throw new Error('no gh-runner in the tree');
  return Number(entry.split(':')[2]);
}

function calls(): Array<{ script: string; uid: number; token: string; args: string }> {
  const file = path.join(records, 'calls.jsonl');
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
}

function expectNoToken(run: ScriptRun): void {
  // The sampler really saw the script and its children (otherwise this check would prove nothing).
  expect(run.processes.some((p) => p.includes('bootstrap-runner.sh'))).toBe(true);
  const envArgs = fs.existsSync(path.join(records, 'env-args')) ? fs.readFileSync(path.join(records, 'env-args'), 'utf8') : '';
  for (const secret of [PAT, REG_TOKEN, REMOVE_TOKEN]) {
    expect(run.out).not.toContain(secret);
    expect(run.processes.some((p) => p.includes(secret))).toBe(false);
    // Sampling ps can miss a short-lived program; `env` records every call it gets.
    expect(envArgs.includes(secret)).toBe(false);
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
    // Host-level commands: any call is recorded (and fails); with --root none may happen.
    for (const name of HOST_COMMANDS) {
      fs.writeFileSync(path.join(fakeBin, name), `#!/bin/sh\necho "${name} $*" >> ${records}/host-commands\nexit 1\n`, { mode: 0o755 });
    }
    // `env` records its arguments, then runs: no secret may be one of them (ps shows a program's arguments).
    fs.writeFileSync(path.join(fakeBin, 'env'), `#!/bin/sh\nprintf '%s\\n' "$*" >> ${records}/env-args\nexec /usr/bin/env "$@"\n`, { mode: 0o755 });
    toolsBin = path.join(work, 'tools');
    fs.mkdirSync(toolsBin);
    for (const tool of ['readlink', 'dirname', 'id', 'stat']) fs.symlinkSync(`/usr/bin/${tool}`, path.join(toolsBin, tool));
    hostPasswd = fs.readFileSync('/etc/passwd', 'utf8');
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

  const installArgs = (): string[] => ['install', ...common(), '--labels', 'linux,vm-sync', '--config', configPath, '--host-fingerprint', `vm01=${hostFingerprint('vm01')}`, '--trust-on-first-use'];

  test('--dry-run on a fresh tree prints every step and changes nothing: no file, no command, no request', async () => {
    const fresh = makeRoot();
    const before = snapshot(fresh);
    const requestsBefore = requests.length;
    const run = await bootstrap(installArgs().map((a) => (a === root ? fresh : a)).concat('--dry-run'));
    expect(run.code).toBe(0);
    expect(snapshot(fresh)).toEqual(before);
    expect(requests.length).toBe(requestsBefore);
    expect(calls()).toEqual([]);
    expect(hostCommands()).toEqual([]);
    expect(fs.readFileSync('/etc/passwd', 'utf8')).toBe(hostPasswd);
    const lines = run.out.split('\n').map((l) => l.replace(/^bootstrap-runner\.sh: /, ''));
    const expected = [
      'dry run: printing each step; nothing is changed',
      'would run on a real host: apt-get install -y git rsync openssh-client curl tar jq util-linux zstd xz-utils bzip2',
      `would create directory ${fresh}/usr (mode 0755, owner root)`,
      `would download ${baseUrl}/gitleaks/v8.30.1/gitleaks_8.30.1_linux_x64.tar.gz and check its SHA-256 is ${gitleaksSha}`,
      `would write ${fresh}/usr/local/bin/gitleaks (mode 0755, owner root)`,
      `would add user gh-runner (uid and gid 999, home /opt/actions-runner, shell /bin/bash) to ${fresh}/etc/passwd ${fresh}/etc/group ${fresh}/etc/shadow ${fresh}/etc/gshadow`,
      `would download ${baseUrl}/runner/v2.329.0/actions-runner-linux-x64-2.329.0.tar.gz and check its SHA-256 is ${runnerSha}`,
      `would write ${fresh}/usr/local/lib/vm-sync/cli.js (mode 0644, owner root)`,
      `would write ${fresh}/usr/local/bin/vm-sync (mode 0755, owner root)`,
      'would mint a registration token with GITHUB_PAT (POST /repos/acme/app/actions/runners/registration-token)',
      `would run as gh-runner in ${fresh}/opt/actions-runner: ACTIONS_RUNNER_INPUT_TOKEN=... ./config.sh --unattended --url https://github.com/acme/app --name vm04 --labels vm-sync,linux --work _work --replace`,
      'would run on a real host: env -C /opt/actions-runner ./svc.sh install gh-runner',
      'would run on a real host: env -C /opt/actions-runner ./svc.sh start',
      `would create directory ${fresh}/etc/vm-sync/keys (mode 0700, owner gh-runner)`,
      `would write ${fresh}/etc/vm-sync/keys/known_hosts (mode 0644, owner gh-runner)`,
      `would generate ${fresh}/etc/vm-sync/keys/id_ed25519_vm01 (ed25519, mode 0600, owner gh-runner) and ${fresh}/etc/vm-sync/keys/id_ed25519_vm01.pub (mode 0644)`,
      `would pin the ed25519 host key 127.0.0.1:${world.vm('vm01').port} offers for vm01 if it is ${hostFingerprint('vm01')} (ssh-keyscan), into ${fresh}/etc/vm-sync/keys/known_hosts`,
      `would pin the ed25519 host key 127.0.0.1:${world.vm('vm02').port} offers for vm02 on first use (ssh-keyscan), into ${fresh}/etc/vm-sync/keys/known_hosts`,
    ];
    for (const line of expected) expect(lines).toContain(line);
    // In the order a real run takes them.
    expect(expected.map((line) => lines.indexOf(line))).toEqual([...expected.map((line) => lines.indexOf(line))].sort((x, y) => x - y));
    expect(lines.some((l) => l.startsWith('dry run: would change: gitleaks 8.30.1, user gh-runner, runner 2.329.0, vm-sync CLI, vm-sync command, registration (vm-sync,linux), key store, key jump:bastion'))).toBe(true);
    expect(run.out).toContain('nothing was changed');
    expectNoToken(run);
  });

  test('install: user, verified runner, registration with labels, key store and pinned host keys; nothing on the host itself', async () => {
    const run = await bootstrap(installArgs());
    expect(run.out).toMatch(/done: /);
    expect(run.code).toBe(0);

    // The user exists in the tree's files only; no host tool was asked.
    const passwd = fs.readFileSync(path.join(root, 'etc', 'passwd'), 'utf8');
    expect(passwd).toContain('gh-runner:x:999:999::/opt/actions-runner:/bin/bash\n');
    expect(fs.readFileSync(path.join(root, 'etc', 'group'), 'utf8')).toContain('\ngh-runner:x:999:\n');
    expect(fs.readFileSync(path.join(root, 'etc', 'shadow'), 'utf8')).toMatch(/\ngh-runner:!:\d+::::::\n/);
    expect(fs.readFileSync(path.join(root, 'etc', 'gshadow'), 'utf8')).toContain('\ngh-runner:!::\n');
    expect(fs.statSync(path.join(root, 'etc', 'shadow')).mode & 0o777).toBe(0o640);
    const uid = runnerUid(root);
    expect(uid).toBe(999);
    expect(fs.readFileSync(path.join(root, 'etc', 'group'), 'utf8')).not.toMatch(/^(sudo|docker):.*gh-runner/m);
    expect(hostCommands()).toEqual([]);
    expect(fs.readFileSync('/etc/passwd', 'utf8')).toBe(hostPasswd);

    // Registration: as the runner user, the token in the environment only, labels including vm-sync.
    // The service (svc.sh, systemctl) belongs to the host that boots the tree: printed, never run.
    const recorded = calls();
    expect(recorded.map((c) => [c.script, c.args])).toEqual([['config.sh', '--unattended --url https://github.com/acme/app --name vm04 --labels vm-sync,linux --work _work --replace']]);
    expect(recorded[0].uid).toBe(uid);
    expect(recorded[0].token).toBe(REG_TOKEN);
    expect(run.out).toContain('would run on a real host: env -C /opt/actions-runner ./svc.sh install gh-runner');
    expect(run.out).toContain(`--root: on the host that boots ${root}, still to run:\n  apt-get install -y git rsync openssh-client curl tar jq util-linux zstd xz-utils bzip2\n  env -C /opt/actions-runner ./svc.sh install gh-runner\n  env -C /opt/actions-runner ./svc.sh start\n`);
    const tokenCall = requests.find((r) => r.path === '/api/repos/acme/app/actions/runners/registration-token');
    expect(tokenCall).toEqual({ method: 'POST', path: '/api/repos/acme/app/actions/runners/registration-token', auth: `Bearer ${PAT}` });

    // Files, modes, owners.
    const runnerDir = path.join(root, 'opt', 'actions-runner');
    expect(fs.statSync(path.join(runnerDir, 'config.sh')).uid).toBe(uid);
    expect(fs.readFileSync(path.join(runnerDir, '.vm-sync-runner-version'), 'utf8')).toBe('2.329.0\n');
    expect(fs.statSync(path.join(root, 'usr', 'local', 'bin', 'gitleaks')).mode & 0o777).toBe(0o755);
    // The vm-sync command and its bundle belong to root: no job can change what an operator runs.
    const cli = path.join(root, 'usr', 'local', 'lib', 'vm-sync', 'cli.js');
    expect(fs.readFileSync(cli)).toEqual(fs.readFileSync(path.join(process.cwd(), 'dist', 'cli.js')));
    expect([fs.statSync(cli).mode & 0o777, fs.statSync(cli).uid]).toEqual([0o644, 0]);
    const wrapper = path.join(root, 'usr', 'local', 'bin', 'vm-sync');
    expect([fs.statSync(wrapper).mode & 0o777, fs.statSync(wrapper).uid]).toEqual([0o755, 0]);
    expect(fs.readFileSync(wrapper, 'utf8')).toContain("default_runner_dir='/opt/actions-runner'\n");
    for (const dir of ['usr', 'usr/local', 'usr/local/lib', 'usr/local/bin']) expect(fs.statSync(path.join(root, dir)).mode & 0o777).toBe(0o755);
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
    expect(fs.statSync(path.join(keyDir, 'known_hosts')).uid).toBe(uid);
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

  test('vm-sync is on PATH and runs with the runner\'s own Node 24 (no node elsewhere on PATH, no node_modules)', () => {
    // PATH: the tree's /usr/local/bin and readlink/dirname/id/stat only; the cwd has no node_modules.
    const help = vmSync(root, ['--help']);
    expect(help.stderr).toBe('');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^vm-sync \d+\.\d+\.\d+: deploy a git repository to a fleet of VMs/);
    const inventory = vmSync(root, ['inventory', '--config', configPath]);
    expect(inventory.code).toBe(0);
    const parsed = JSON.parse(inventory.stdout) as { key_storage_path: string; vms: Array<{ id: string; port: number }> };
    expect(parsed.key_storage_path).toBe('/etc/vm-sync/keys');
    expect(parsed.vms.map((vm) => vm.id).sort()).toEqual(['vm01', 'vm02', 'vm09']);
    expect(parsed.vms.find((vm) => vm.id === 'vm01')?.port).toBe(world.vm('vm01').port);
  });

  test('the wrapper picks the newest externals/nodeNN when it runs, skips musl builds, and says what to do when there is none', () => {
    const externals = path.join(root, 'opt', 'actions-runner', 'externals');
    const uid = runnerUid(root);
    const used = path.join(records, 'node-used');
    const fakeNode = (name: string, body: string): void => {
      fs.mkdirSync(path.join(externals, name, 'bin'), { recursive: true });
      fs.writeFileSync(path.join(externals, name, 'bin', 'node'), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
      for (const p of [path.join(externals, name), path.join(externals, name, 'bin'), path.join(externals, name, 'bin', 'node')]) fs.chownSync(p, uid, uid);
    };
    // The runner updated itself to a Node 26 (a stand-in that runs the real one), and ships a musl build of a later one.
    fakeNode('node26', `echo node26 >> ${used}\nexec ${path.join(externals, 'node24', 'bin', 'node')} "$@"`);
    fakeNode('node99_alpine', `echo alpine99 >> ${used}\nexit 9`);
    fakeNode('node9', `echo node9 >> ${used}\nexit 9`);
    try {
      const run = vmSync(root, ['--help']);
      expect(run.code).toBe(0);
      expect(fs.readFileSync(used, 'utf8')).toBe('node26\n');
      // No usable node at all: a clear message naming where it looked, exit 127.
      fs.rmSync(path.join(externals, 'node26'), { recursive: true });
      fs.chmodSync(path.join(externals, 'node24', 'bin', 'node'), 0o644);
      const none = vmSync(root, ['--help']);
      expect(none.code).toBe(127);
      expect(none.stderr).toBe(
        `vm-sync: no Node.js 20+ to run with: looked for ${path.join(root, 'opt', 'actions-runner')}/externals/node*/bin/node (the Actions runner's own) and node on PATH. Install the runner (scripts/bootstrap-runner.sh install), set VM_SYNC_RUNNER_DIR to its directory, or set VM_SYNC_NODE to a Node.js 20+ binary.\n`,
      );
      expect(fs.readFileSync(used, 'utf8')).toBe('node26\n');
    } finally {
      fs.chmodSync(path.join(externals, 'node24', 'bin', 'node'), 0o755);
      for (const name of ['node26', 'node99_alpine', 'node9']) fs.rmSync(path.join(externals, name), { recursive: true, force: true });
      fs.rmSync(used, { force: true });
    }
  });

  test('root never runs the node the runner user can replace: it is refused with the fix, and a root-owned node on PATH is used instead', () => {
    const refused = vmSync(root, ['--help'], { uid: 0 });
    expect(refused.code).toBe(127);
    expect(refused.stderr).toContain(`Not used, because another user can replace them: ${path.join(root, 'opt', 'actions-runner')}/externals/node24/bin/node (${path.join(root, 'opt', 'actions-runner')}`);
    expect(refused.stderr).toContain('belongs to uid 999): run vm-sync as that user (e.g. sudo -u <runner user> vm-sync ...)');
    const withPathNode = vmSync(root, ['--help'], { uid: 0, path: `${toolsBin}:${path.dirname(NODE24)}` });
    expect(withPathNode.code).toBe(0);
    expect(withPathNode.stdout).toMatch(/^vm-sync \d+\.\d+\.\d+: deploy/);
  });

  test('doctor reads the installed runner\'s version (once, not per VM) and fails a runner older than GitHub\'s minimum', () => {
    const run = vmSync(root, ['doctor', '--config', configPath, '--json', '--vm', 'vm01']);
    const doc = JSON.parse(run.stdout) as { runner_host: { checks: Array<{ name: string; status: string; detail: string }> }; vms: unknown[] };
    const runner = doc.runner_host.checks.filter((check) => check.name === 'runner');
    expect(runner).toEqual([{ name: 'runner', status: 'ok', detail: `runner 2.329.0 in ${path.join(root, 'opt', 'actions-runner')} (GitHub's minimum for registration: 2.329.0; read from bin/Runner.Listener.deps.json)`, hint: null }]);
    const deps = path.join(root, 'opt', 'actions-runner', 'bin', 'Runner.Listener.deps.json');
    const original = fs.readFileSync(deps);
    try {
      fs.writeFileSync(deps, JSON.stringify({ libraries: { 'Runner.Listener/2.328.9': { type: 'project' } } }));
      const old = vmSync(root, ['doctor', '--config', configPath, '--vm', 'vm01']);
      expect(old.code).toBe(1);
      const lines = old.stdout.split('\n');
      expect(lines[0]).toBe(`runner host  FAIL  runner      runner 2.328.9 in ${path.join(root, 'opt', 'actions-runner')} is older than 2.329.0, the oldest GitHub lets register or connect: the sync job would never start`);
      expect(lines.filter((l) => /^runner host +[A-Z]+ +runner /.test(l))).toHaveLength(1);
      expect(lines.filter((l) => /^runner host: not ready \(runner[,)]/.test(l))).toHaveLength(1);
    } finally {
      fs.writeFileSync(deps, original);
    }
  });

  test('a second install with the same arguments changes nothing; --dry-run then changes nothing either; changed labels are applied', async () => {
    const before = calls().length;
    const downloads = requests.filter((r) => r.path.endsWith('.tar.gz')).length;
    const again = await bootstrap(installArgs());
    expect(again.code).toBe(0);
    expect(again.out).toContain(`unchanged: runner vm04 is installed and registered (vm-sync,linux) in ${root}`);
    expect(calls().length).toBe(before);
    expect(requests.filter((r) => r.path.endsWith('.tar.gz')).length).toBe(downloads);

    // A dry run over the installed tree: nothing to do, nothing touched; a changed label is planned, not applied.
    const tree = snapshot(root);
    const requestCount = requests.length;
    const dry = await bootstrap(installArgs().concat('--dry-run'));
    expect(dry.code).toBe(0);
    expect(dry.out).toContain('dry run: nothing to change');
    const dryRelabel = await bootstrap(['install', ...common(), '--labels', 'linux,deploy', '--dry-run'], {});
    expect(dryRelabel.code).toBe(0);
    expect(dryRelabel.out).toContain(`would run as gh-runner in ${root}/opt/actions-runner: ./config.sh remove --local`);
    expect(dryRelabel.out).toContain('note: neither GITHUB_PAT nor RUNNER_TOKEN is set; a real run needs one in the environment');
    expect(dryRelabel.out).toContain('dry run: would change: registration (vm-sync,linux,deploy); nothing was changed');
    const dryUninstall = await bootstrap(['uninstall', '--url', 'https://github.com/acme/app', '--root', root, '--delete-user', '--delete-dir', '--dry-run']);
    expect(dryUninstall.code).toBe(0);
    expect(dryUninstall.out).toContain(`would run: rm -rf ${root}/opt/actions-runner`);
    expect(dryUninstall.out).toContain(`would remove user gh-runner from ${root}/etc/passwd`);
    expect(snapshot(root)).toEqual(tree);
    expect(requests.length).toBe(requestCount);
    expect(calls().length).toBe(before);

    const relabel = await bootstrap(['install', ...common(), '--labels', 'linux,deploy']);
    expect(relabel.code).toBe(0);
    expect(relabel.out).toContain('registration settings changed: re-registering vm04');
    expect(calls().slice(before).map((c) => [c.script, c.args])).toEqual([
      ['config.sh', 'remove --local'],
      ['config.sh', '--unattended --url https://github.com/acme/app --name vm04 --labels vm-sync,linux,deploy --work _work --replace'],
    ]);
    expect(hostCommands()).toEqual([]);
    expectNoToken(again);
    expectNoToken(relabel);
  });

  test('a host key that does not match the given fingerprint is refused', async () => {
    const other = makeRoot();
    const run = await bootstrap(['install', ...common().map((a) => (a === root ? other : a)), '--config', configPath, '--host-fingerprint', `jump:bastion=${hostFingerprint('bastion')}`, '--host-fingerprint', 'vm01=SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA']);
    expect(run.code).toBe(1);
    expect(run.out).toContain(`vm01 offers ${hostFingerprint('vm01')}, not the expected SHA256:AAAA`);
  });

  test('a --dir or --user that could escape its place is refused before anything happens', async () => {
    for (const [flag, value] of [['--dir', '/opt/x;touch /tmp/pwned'], ['--dir', 'relative/dir'], ['--dir', "/opt/it's"], ['--dir', '/opt/../etc'], ['--user', 'Bad User']]) {
      const run = await bootstrap(['install', ...common(), flag, value, '--dry-run']);
      expect(run.code).toBe(1);
      expect(run.out).toContain(`${flag} must be`);
    }
  });

  test('status, then uninstall with a fresh remove token, deleting user, directory and the vm-sync command; no host command', async () => {
    const status = await bootstrap(['status', '--root', root]);
    expect(status.code).toBe(0);
    expect(status.out).toContain('vm-sync command: /usr/local/bin/vm-sync');
    expect(status.out).toContain('service: not checked (--root: the tree\'s services do not run on this host)');

    const before = calls().length;
    const run = await bootstrap(['uninstall', '--url', 'https://github.com/acme/app', '--root', root, '--delete-user', '--delete-dir']);
    expect(run.code).toBe(0);
    const recorded = calls().slice(before);
    expect(recorded.map((c) => [c.script, c.args])).toEqual([['config.sh', 'remove --unattended']]);
    expect(recorded[0].token).toBe(REMOVE_TOKEN);
    expect(fs.existsSync(path.join(root, 'opt', 'actions-runner'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'usr', 'local', 'bin', 'vm-sync'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'usr', 'local', 'lib', 'vm-sync'))).toBe(false);
    for (const file of ['passwd', 'group', 'shadow', 'gshadow']) expect(fs.readFileSync(path.join(root, 'etc', file), 'utf8')).not.toContain('gh-runner');
    expect(hostCommands()).toEqual([]);
    expect(fs.readFileSync('/etc/passwd', 'utf8')).toBe(hostPasswd);
    expectNoToken(run);
  });
});

if (!isRoot) test('bootstrap tests need root (they create users in a throwaway root)', () => undefined);
