import { execFileSync, spawn } from 'node:child_process';
import type { World } from './world.js';
import fs from 'node:fs';
import type { FleetVm } from '../../src/demo/fleet.js';
import { stopVm } from '../../src/demo/fleet.js';

/**
 * Two network namespaces for jump-host tests (root only):
 *
 *   root namespace (the runner) 10.X.1.1 ── 10.X.1.2 "bastion" namespace 10.X.2.1 ── 10.X.2.2 "vms" namespace
 *
 * The runner has no route to 10.X.2.0/24 and the bastion namespace does not
 * forward, so a VM in the "vms" namespace is reachable only by a connection
 * the bastion's sshd opens.
 */
export class JumpNet {
  readonly bastionNs: string;
  readonly vmsNs: string;
  readonly bastionIp: string;
  readonly vmIp: string;
  private readonly ifs: { root: string };

  constructor(readonly tag: string, subnet: number) {
    this.bastionNs = `vsj-${tag}-bastion`;
    this.vmsNs = `vsj-${tag}-vms`;
    this.bastionIp = `10.${subnet}.1.2`;
    this.vmIp = `10.${subnet}.2.2`;
    this.ifs = { root: `vsj${tag}r` };
    const ip = (...args: string[]): void => {
      execFileSync('ip', args, { stdio: 'pipe' });
    };
    this.down();
    ip('netns', 'add', this.bastionNs);
    ip('netns', 'add', this.vmsNs);
    ip('link', 'add', this.ifs.root, 'type', 'veth', 'peer', 'name', `vsj${tag}b`, 'netns', this.bastionNs);
    ip('addr', 'add', `10.${subnet}.1.1/24`, 'dev', this.ifs.root);
    ip('link', 'set', this.ifs.root, 'up');
    // The runner has no way to the VMs' network: without this, a packet to it would follow the default route off this machine.
    ip('route', 'add', 'unreachable', `10.${subnet}.2.0/24`);
    ip('-n', this.bastionNs, 'link', 'set', 'lo', 'up');
    ip('-n', this.bastionNs, 'addr', 'add', `${this.bastionIp}/24`, 'dev', `vsj${tag}b`);
    ip('-n', this.bastionNs, 'link', 'set', `vsj${tag}b`, 'up');
    ip('-n', this.bastionNs, 'link', 'add', `vsj${tag}c`, 'type', 'veth', 'peer', 'name', `vsj${tag}v`, 'netns', this.vmsNs);
    ip('-n', this.bastionNs, 'addr', 'add', `10.${subnet}.2.1/24`, 'dev', `vsj${tag}c`);
    ip('-n', this.bastionNs, 'link', 'set', `vsj${tag}c`, 'up');
    ip('-n', this.vmsNs, 'link', 'set', 'lo', 'up');
    ip('-n', this.vmsNs, 'addr', 'add', `${this.vmIp}/24`, 'dev', `vsj${tag}v`);
    ip('-n', this.vmsNs, 'link', 'set', `vsj${tag}v`, 'up');
  }

  /**
   * Moves a fleet VM's sshd into a namespace, listening on `address`
   * (stopped first; same port, keys and home), and repins its host key in
   * `knownHosts` under the new address.
   */
  async move(vm: FleetVm, ns: string, address: string, knownHosts: string): Promise<void> {
    stopVm(vm);
    const config = fs.readFileSync(`${vm.dir}/sshd_config`, 'utf8').replace(/^ListenAddress .*$/m, `ListenAddress ${address}`);
    fs.writeFileSync(`${vm.dir}/sshd_config`, config);
    await this.startIn(vm, ns);
    fs.writeFileSync(knownHosts, fs.readFileSync(knownHosts, 'utf8').replace(`[127.0.0.1]:${vm.port} `, `[${address}]:${vm.port} `));
  }

  /** (Re)starts a moved VM's sshd in its namespace; resolves once it listens (sshd binds before it daemonises). */
  async startIn(vm: FleetVm, ns: string): Promise<void> {
    const child = spawn('ip', ['netns', 'exec', ns, '/usr/sbin/sshd', '-f', `${vm.dir}/sshd_config`, '-E', vm.log], { stdio: 'ignore', detached: true });
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`sshd for ${vm.id} in ${ns} exited ${code}; see ${vm.log}`))));
    });
  }

  /**
   * Samples, every 50 ms until stopped, how many TCP connections the bastion
   * namespace has open to the VMs: the connections its sshd forwards.
   */
  sampleForwarded(): { stop(): Promise<number[]> } {
    const child = spawn('sh', ['-c', `while :; do ip netns exec ${this.bastionNs} ss -Htn state established dst ${this.vmIp} | wc -l; sleep 0.05; done`], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    return {
      stop: async () => {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('close', r));
        return out.split('\n').filter(Boolean).map(Number);
      },
    };
  }

  /** Removes both namespaces and whatever still runs in them (only what the test started). */
  down(): void {
    for (const ns of [this.bastionNs, this.vmsNs]) {
      let pids: string[];
      try {
        pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n').filter(Boolean);
      } catch {
        continue; // no such namespace
      }
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone
        }
      }
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // gone
      }
    }
    try {
      execFileSync('ip', ['link', 'del', this.ifs.root], { stdio: 'ignore' });
    } catch {
      // gone with the namespace
    }
    try {
      execFileSync('ip', ['route', 'del', 'unreachable', `${this.vmIp.split('.').slice(0, 3).join('.')}.0/24`], { stdio: 'ignore' });
    } catch {
      // not there
    }
  }
}

/** Whether this machine can make network namespaces (root with iproute2). */
export function canMakeNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The file name of a jump host's key in the key store, as the config derives it. */
export function jumpKeyFile(name: string): string {
  return `id_ed25519_jump_${name}`;
}

/** Makes a fleet VM's client key the jump host key `name` (the fleet's sshd for that VM authorizes it). */
export function adoptJumpKey(keyDir: string, vmId: string, name: string): void {
  const target = `${keyDir}/${jumpKeyFile(name)}`;
  fs.copyFileSync(`${keyDir}/id_ed25519_${vmId}`, target);
  fs.chmodSync(target, 0o600);
}

/**
 * Writes the world's config for a fleet behind one jump host `bastion`: the
 * VMs `behind` (each at `vmIp`, its own port), the `direct` ones on loopback.
 */
export function writeJumpConfig(world: World, options: { bastion: { ip: string; port: number; maxSessions: number }; vmIp: string; behind: string[]; direct?: string[]; sync: string; extra?: string[] }): void {
  const { user } = world.fleet;
  fs.writeFileSync(
    world.configPath,
    [
      'jump_hosts:',
      `  bastion: { ip: ${options.bastion.ip}, ssh_user: ${user}, ssh_port: ${options.bastion.port}, max_sessions: ${options.bastion.maxSessions} }`,
      'vms:',
      ...options.behind.map((id) => `  ${id}: { ip: ${options.vmIp}, ssh_user: ${user}, ssh_port: ${world.vm(id).port}, jump: bastion }`),
      ...(options.direct ?? []).map((id) => `  ${id}: { ip: 127.0.0.1, ssh_user: ${user}, ssh_port: ${world.vm(id).port} }`),
      'repository:',
      `  main_repo_path: ${world.runnerRepo}`,
      `  url: ${world.ws.origin}`,
      '  default_branch: main',
      '  vm_repo_paths: { default: ~/app }',
      'remote_execution:',
      `  key_storage_path: ${world.fleet.keyDir}`,
      `  known_hosts: ${world.fleet.knownHosts}`,
      `sync: ${options.sync}`,
      'rollout: { max_failed: "100%" }',
      ...(options.extra ?? []),
      '',
    ].join('\n'),
  );
}
