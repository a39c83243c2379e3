import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkConfigFiles, ConfigError, loadConfig, parseConfig } from '../../src/config/load.js';
import { pathProblem } from '../../src/config/paths.js';

const MINIMAL = `
vms:
  vm01: { ip: 192.0.2.11, ssh_user: deploy }
  vm02: { ip: 192.0.2.12, ssh_user: deploy, ssh_port: 2222 }
repository:
  main_repo_path: /srv/app
`;

function problemsOf(text: string): string[] {
  try {
    parseConfig(text, 'vm-sync.yml', '/home/runner');
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems.map((p) => `${p.line ?? '-'}: ${p.message}`);
  }
  throw new Error('expected the config to be rejected');
}

describe('parseConfig', () => {
  test('fills every documented default', () => {
    const config = parseConfig(MINIMAL, 'vm-sync.yml', '/home/runner');
    expect(config.vms).toEqual([
      { id: 'vm01', host: '192.0.2.11', user: 'deploy', port: 22, repoPath: '~/app', keyPath: '/home/runner/.ssh/vm-sync_keys/id_ed25519_vm01' },
      { id: 'vm02', host: '192.0.2.12', user: 'deploy', port: 2222, repoPath: '~/app', keyPath: '/home/runner/.ssh/vm-sync_keys/id_ed25519_vm02' },
    ]);
    expect(config.repository).toEqual({
      mainRepoPath: '/srv/app',
      url: null,
      remote: 'origin',
      defaultBranch: 'main',
      excludeDotGit: true,
      rsyncExcludes: ['.git', '__pycache__', '.vscode'],
      layout: 'atomic',
      keepReleases: 3,
      secretScanning: { enabled: true, tool: 'gitleaks', configPath: '.gitleaks.toml', blockOnSecrets: true, gitleaksPath: null, timeoutS: 600 },
    });
    expect(config.keyStoragePath).toBe('/home/runner/.ssh/vm-sync_keys');
    expect(config.knownHostsPath).toBe('/home/runner/.ssh/vm-sync_keys/known_hosts');
    expect(config.sync).toEqual({ concurrency: 8, connectTimeoutS: 10, timeoutS: 900, retries: 3, postSyncCommand: null });
  });

  test('accepts the full documented shape, with per-VM paths overriding default', () => {
    const config = parseConfig(
      `vms:
  vm01: { ip: 192.0.2.11, ssh_user: deploy, ssh_port: 22 }
  vm02: { ip: app-2.internal, ssh_user: deploy, ssh_port: 22 }
repository:
  main_repo_path: ~/srv/app
  url: git@github.com:OWNER/REPO.git
  remote: upstream
  default_branch: trunk
  vm_repo_paths: { default: ~/app, vm02: /opt/app/ }
  exclude_dot_git: false
  rsync_excludes: [node_modules, "*.log"]
  layout: in-place
  keep_releases: 5
  secret_scanning: { enabled: false, tool: gitleaks, config_path: ci/gitleaks.toml, block_on_secrets: false }
remote_execution:
  key_storage_path: /etc/vm-sync/keys
  known_hosts: /etc/vm-sync/known_hosts
sync:
  concurrency: 2
  connect_timeout_s: 3
  timeout_s: 60
  retries: 0
  post_sync_command: systemctl --user restart app
`,
      'f.yml',
      '/home/runner',
    );
    expect(config.vms.map((vm) => [vm.id, vm.repoPath, vm.keyPath])).toEqual([
      ['vm01', '~/app', '/etc/vm-sync/keys/id_ed25519_vm01'],
      ['vm02', '/opt/app', '/etc/vm-sync/keys/id_ed25519_vm02'],
    ]);
    expect(config.repository.mainRepoPath).toBe('/home/runner/srv/app');
    expect(config.repository.layout).toBe('in-place');
    expect(config.repository.rsyncExcludes).toEqual(['node_modules', '*.log']);
    expect(config.sync.postSyncCommand).toBe('systemctl --user restart app');
    expect(config.knownHostsPath).toBe('/etc/vm-sync/known_hosts');
  });

  test('an unknown key is an error naming the key and its line', () => {
    expect(problemsOf(`${MINIMAL}sync:\n  concurency: 4\n`)).toEqual([
      "8: unknown key 'concurency' in sync (allowed: concurrency, connect_timeout_s, timeout_s, retries, post_sync_command)",
    ]);
    expect(problemsOf(MINIMAL.replace('ssh_user: deploy }', 'ssh_user: deploy, ssh_prot: 22 }'))).toEqual([
      "3: unknown key 'ssh_prot' in vms.vm01 (allowed: ip, ssh_user, ssh_port)",
    ]);
  });

  test('reports every problem at once, one message each', () => {
    const problems = problemsOf(`
vms:
  vm01: { ssh_user: deploy }
  vm02: { ip: 192.0.2.12, ssh_user: deploy, ssh_port: 70000 }
  "bad id": { ip: 1.2.3.4, ssh_user: x }
repository:
  vm_repo_paths: { default: app, vm03: /opt/app }
  layout: blue-green
`);
    expect(problems).toEqual([
      "7: repository.vm_repo_paths.default must be absolute (start with / or ~/): 'app'",
      '3: vms.vm01.ip is required',
      '4: vms.vm02.ssh_port must be a whole number from 1 to 65535',
      "5: VM id 'bad id' must be letters, digits, '.', '_' or '-' (and not 'default')",
      "7: repository.vm_repo_paths names unknown VM 'vm03' (known: vm01, vm02, bad id)",
      '6: repository.main_repo_path is required',
      "8: repository.layout must be 'atomic' or 'in-place', not 'blue-green'",
    ]);
  });

  test.each([
    ['empty', "''", 'is empty'],
    ['root', '/', 'must name a directory, not /'],
    ['home itself', '~/', 'must name a directory, not the home directory'],
    ['relative', 'srv/app', 'must be absolute (start with / or ~/)'],
    ['dot-dot', '/srv/../etc', "must not contain '..'"],
  ])('rejects a %s main_repo_path', (_name, value, message) => {
    const problems = problemsOf(MINIMAL.replace('/srv/app', value));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(message);
  });

  test('a VM with no target path and no default is an error', () => {
    const problems = problemsOf(`${MINIMAL.replace('main_repo_path: /srv/app', 'main_repo_path: /srv/app\n  vm_repo_paths: { vm01: /opt/app }')}`);
    expect(problems).toEqual([expect.stringContaining("no target path for VM 'vm02'")]);
  });

  test('YAML syntax errors carry their line', () => {
    expect(problemsOf('vms:\n  vm01: { ip: [unclosed\n')[0]).toMatch(/^\d+: YAML: /);
  });

  test('an empty file asks for VMs', () => {
    expect(problemsOf('')).toEqual(expect.arrayContaining(['-: vms must list at least one VM (vm_id: { ip, ssh_user, ssh_port })']));
  });

  test.each([
    ['a VM id', `${MINIMAL}`.replace('  vm02:', '  vm01: { ip: 192.0.2.13, ssh_user: deploy }\n  vm02:'), "4: duplicate key 'vm01' in vms (first on line 3)"],
    ['a VM field', MINIMAL.replace('ssh_user: deploy }', 'ssh_user: deploy, ip: 192.0.2.99 }'), "3: duplicate key 'ip' in vms.vm01 (first on line 3)"],
    ['a section', `${MINIMAL}sync: { retries: 1 }\nsync: { retries: 2 }\n`, "8: duplicate key 'sync' in the config (first on line 7)"],
    ['a target path', `${MINIMAL}  vm_repo_paths:\n    default: /a\n    default: /b\n`, "9: duplicate key 'default' in repository.vm_repo_paths (first on line 8)"],
  ])('a duplicated key (%s) is an error naming both lines', (_what, text, message) => {
    expect(problemsOf(text)).toEqual([message]);
  });
});

describe('a large fleet', () => {
  /** A config of `n` VMs, as block or flow mappings, optionally with a target path per VM. */
  function fleet(n: number, style: 'flow' | 'block', perVmPaths: boolean): string {
    const lines = ['vms:'];
    for (let i = 0; i < n; i++) {
      const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
      if (style === 'flow') lines.push(`  host-${i}: { ip: ${ip}, ssh_user: deploy, ssh_port: ${2000 + (i % 1000)} }`);
      else lines.push(`  host-${i}:`, `    ip: ${ip}`, '    ssh_user: deploy');
    }
    lines.push('repository:', '  main_repo_path: /srv/app', '  vm_repo_paths:', '    default: ~/app');
    if (perVmPaths) for (let i = 0; i < n; i++) lines.push(`    host-${i}: /srv/app-${i}`);
    return `${lines.join('\n')}\n`;
  }

  function parseMs(text: string): number {
    const start = performance.now();
    parseConfig(text, 'fleet.yml', '/home/runner');
    return performance.now() - start;
  }

  test.each([
    ['flow', false],
    ['block', true],
  ] as const)('loading is linear in the VM count (%s mappings, per-VM paths: %s)', (style, perVmPaths) => {
    const small = fleet(2000, style, perVmPaths);
    const large = fleet(20000, style, perVmPaths);
    parseMs(small); // warm up the JIT so the small run is not charged for compiling
    // The fastest of rounds that alternate the sizes: other work on a shared
    // machine slows some rounds, and a minimum taken over both sizes alike cancels that.
    let [smallMs, largeMs] = [Infinity, Infinity];
    for (let round = 0; round < 3; round++) {
      smallMs = Math.min(smallMs, parseMs(small));
      largeMs = Math.min(largeMs, parseMs(large));
    }
    // 10x the VMs: linear measured x9-x18 here under load; the quadratic code this guards against, x39-x93.
    console.log(`parseConfig: 2,000 VMs ${smallMs.toFixed(0)} ms, 20,000 VMs ${largeMs.toFixed(0)} ms (x${(largeMs / smallMs).toFixed(1)})`);
    expect(largeMs / smallMs).toBeLessThan(28);
    const config = parseConfig(large, 'fleet.yml', '/home/runner');
    expect(config.vms).toHaveLength(20000);
    expect(config.vms[19998]).toMatchObject({ id: 'host-19998', repoPath: perVmPaths ? '/srv/app-19998' : '~/app' });
  }, 120_000);

  test('a stray target path among thousands of VMs names a few known ids, not all of them', () => {
    const problems = problemsOf(fleet(5000, 'flow', false).replace('    default: ~/app', '    default: ~/app\n    nosuchvm: /x'));
    expect(problems).toEqual([expect.stringMatching(/names unknown VM 'nosuchvm' \(known: host-0, host-1, .*, host-9 and 4990 more\)$/)]);
  });
});

describe('pathProblem', () => {
  test.each(['/srv/app', '~/app', '/opt/my app', '/srv/./app'])('accepts %s', (p) => expect(pathProblem(p)).toBeNull());
  test.each(['', ' ', '/', '~', '~/', 'app', './app', '/a/../b', '~/..', '/srv/app\nrm -rf /', '~user/app'])('rejects %j', (p) =>
    expect(pathProblem(p)).not.toBeNull(),
  );
});

describe('file checks', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vm-sync-config-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const write = (extra = ''): string => {
    const file = path.join(dir, 'vm-sync.yml');
    fs.writeFileSync(file, `${MINIMAL}remote_execution:\n  key_storage_path: ${dir}/keys\n${extra}`);
    return file;
  };

  test('missing key files and a missing known_hosts stop the run with one message each', () => {
    fs.mkdirSync(path.join(dir, 'keys'));
    fs.writeFileSync(path.join(dir, 'keys', 'id_ed25519_vm01'), 'key', { mode: 0o644 });
    const file = write();
    expect(() => loadConfig(file)).toThrow(ConfigError);
    const problems = checkConfigFiles(parseConfig(fs.readFileSync(file, 'utf8'), file));
    expect(problems.map((p) => p.message)).toEqual([
      `SSH key for vm01 is readable by other users (mode 644): run chmod 600 ${dir}/keys/id_ed25519_vm01`,
      `SSH key for vm02 not found or not readable: ${dir}/keys/id_ed25519_vm02`,
      `pinned known_hosts (remote_execution.known_hosts) not found or not readable: ${dir}/keys/known_hosts`,
    ]);
  });

  test('a complete setup loads', () => {
    fs.mkdirSync(path.join(dir, 'keys'));
    for (const id of ['vm01', 'vm02']) fs.writeFileSync(path.join(dir, 'keys', `id_ed25519_${id}`), 'key', { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'keys', 'known_hosts'), '');
    expect(loadConfig(write()).vms).toHaveLength(2);
  });

  test('an unreadable config file is a config error, not a crash', () => {
    expect(() => loadConfig(path.join(dir, 'nope.yml'))).toThrow(/cannot read config file: ENOENT/);
  });
});
