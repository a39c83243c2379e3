import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node, type Pair, type YAMLMap } from 'yaml';
import { VmSyncError } from '../errors.js';
import { expandLocalHome, normalizePath, pathProblem } from './paths.js';
import { parseQuantity } from './rollout.js';
import type { JumpHost, Config, Layout, Quantity, RolloutConfig, SharedPath, VmConfig } from './types.js';

/** One thing wrong with the config, with the line it is on when known. */
export interface ConfigProblem {
  line: number | null;
  message: string;
}

/** Thrown when the config cannot be used; carries every problem found, not just the first. */
export class ConfigError extends VmSyncError {
  readonly problems: ConfigProblem[];

  constructor(source: string, problems: ConfigProblem[]) {
    const lines = problems.map((p) => `  ${source}${p.line ? `:${p.line}` : ''}: ${p.message}`);
    super('config_invalid', `invalid config (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${lines.join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const VM_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const HOST = /^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/;
const USER = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;
const GIT_NAME = /^[A-Za-z0-9_][A-Za-z0-9_./-]*$/;

interface Context {
  problems: ConfigProblem[];
  lines: LineCounter;
}

function lineOf(ctx: Context, node: Node | null | undefined): number | null {
  const offset = node?.range?.[0];
  return offset === undefined ? null : ctx.lines.linePos(offset).line;
}

/**
 * Reads one mapping of the config. Unknown keys are reported on construction,
 * so a typo (`ssh_prot`) is an error that names the key and its line instead
 * of a silently ignored setting.
 */
class Section {
  private readonly pairs = new Map<string, Pair<Node, Node | null>>();

  constructor(
    private readonly ctx: Context,
    readonly where: string,
    private readonly self: Node | null | undefined,
    allowed: readonly string[] | null,
    /** The key this section hangs from: where a missing key inside it is reported. */
    private readonly anchor?: Node | null,
  ) {
    const node = self;
    if (node === null || node === undefined || (isScalar(node) && node.value === null)) return;
    if (!isMap(node)) {
      this.problem(node, `${where || 'the config'} must be a mapping`);
      return;
    }
    for (const pair of (node as YAMLMap<Node, Node | null>).items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : null;
      if (key === null) {
        this.problem(pair.key, `${where} has a key that is not a plain name`);
        continue;
      }
      if (allowed && !allowed.includes(key)) {
        this.problem(pair.key, `unknown key '${key}' in ${where || 'the config'} (allowed: ${allowed.join(', ')})`);
        continue;
      }
      // Duplicates are found here rather than by the YAML parser's uniqueKeys,
      // which compares every key with every earlier one (quadratic in the VM count).
      const first = this.pairs.get(key);
      if (first) {
        this.problem(pair.key, `duplicate key '${key}' in ${where || 'the config'} (first on line ${lineOf(ctx, first.key) ?? '?'})`);
        continue;
      }
      this.pairs.set(key, pair);
    }
  }

  keys(): string[] {
    return [...this.pairs.keys()];
  }

  /** Whether the section has `key` (a map lookup: safe inside a loop over thousands of VMs). */
  has(key: string): boolean {
    return this.pairs.has(key);
  }

  get size(): number {
    return this.pairs.size;
  }

  node(key: string): Node | null | undefined {
    return this.pairs.get(key)?.value;
  }

  keyNode(key: string): Node | null | undefined {
    return this.pairs.get(key)?.key;
  }

  /** The 1-based line of an offset in the config text. */
  lineAt(offset: number): number {
    return this.ctx.lines.linePos(offset).line;
  }

  /** Records a problem at `node`, or at this section when the node is absent (a missing key). */
  problem(node: Node | null | undefined, message: string): void {
    this.ctx.problems.push({ line: lineOf(this.ctx, node ?? this.anchor ?? this.self), message });
  }

  private scalar(key: string): { present: boolean; value: unknown; node: Node | null | undefined } {
    const pair = this.pairs.get(key);
    if (!pair) return { present: false, value: undefined, node: undefined };
    const node = pair.value;
    if (node && !isScalar(node)) return { present: true, value: node, node };
    return { present: true, value: node ? node.value : null, node: node ?? pair.key };
  }

  string(key: string, fallback: string | null, required = false): string | null {
    const { present, value, node } = this.scalar(key);
    if (!present || value === null) {
      if (required) this.problem(this.keyNode(key), `${this.where}.${key} is required`);
      return fallback;
    }
    if (typeof value === 'number') return String(value);
    if (typeof value !== 'string') {
      this.problem(node, `${this.where}.${key} must be a string`);
      return fallback;
    }
    return value;
  }

  bool(key: string, fallback: boolean): boolean {
    const { present, value, node } = this.scalar(key);
    if (!present || value === null) return fallback;
    if (typeof value !== 'boolean') {
      this.problem(node, `${this.where}.${key} must be true or false`);
      return fallback;
    }
    return value;
  }

  int(key: string, fallback: number, min: number, max: number): number {
    const { present, value, node } = this.scalar(key);
    if (!present || value === null) return fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      this.problem(node, `${this.where}.${key} must be a whole number from ${min} to ${max}`);
      return fallback;
    }
    return value;
  }

  /**
   * A number of VMs: a whole number >= `min`, or a string `"N%"` (N from `min` to 100).
   * `what` says what the number is, for the message.
   */
  quantity(key: string, fallback: Quantity, min: 0 | 1, what: string): Quantity {
    const { present, value, node } = this.scalar(key);
    if (!present || value === null) return fallback;
    const source = node && isScalar(node) ? node.source : undefined;
    const parsed = parseQuantity(value, min, typeof source === 'string' ? source : undefined);
    if (parsed === null) {
      const written = typeof source === 'string' ? source : String(value);
      const shown = node && !isScalar(node) ? ' not a list or mapping' : ` not '${escaped(written)}'`;
      this.problem(
        node,
        `${this.where}.${key} must be a whole number of VMs (${min} or more) or a percentage of the selected VMs from ${min}% to 100% written like "25%" (${what}),${shown}`,
      );
      return fallback;
    }
    return parsed;
  }

  stringList(key: string, fallback: string[]): string[] {
    const node = this.node(key);
    if (node === undefined || node === null || (isScalar(node) && node.value === null)) return fallback;
    if (!isSeq(node)) {
      this.problem(node, `${this.where}.${key} must be a list`);
      return fallback;
    }
    const out: string[] = [];
    for (const item of node.items as Node[]) {
      const value = isScalar(item) ? item.value : undefined;
      if (typeof value !== 'string' || value === '' || /[\n\r\0]/.test(value)) {
        this.problem(item, `${this.where}.${key} entries must be non-empty single-line strings`);
      } else {
        out.push(value);
      }
    }
    return out;
  }

  section(key: string, allowed: readonly string[] | null): Section {
    return new Section(this.ctx, this.where === '' ? key : `${this.where}.${key}`, this.node(key), allowed, this.keyNode(key));
  }
}

// C0 and C1 control characters and DEL.
// eslint-disable-next-line no-control-regex
const CONTROL_CHAR = /[\u0000-\u001f\u007f-\u009f]/;
const CONTROL_CHARS = new RegExp(CONTROL_CHAR.source, 'g');

/** A config value as it may be shown inside a one-line message: control characters escaped. */
function escaped(value: string): string {
  return value.replace(CONTROL_CHARS, (c) => {
    const named: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
    return named[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
  });
}

/** At most this many `repository.shared_paths` entries. */
export const MAX_SHARED_PATHS = 50;

/**
 * Why one `repository.shared_paths` entry is unusable (a phrase that follows the entry in a
 * message, with what to do), or null when it is fine. Accepted: a relative `/`-separated path
 * inside the target, optionally ending in one `/` (a directory).
 */
export function sharedPathProblem(value: string): string | null {
  if (value.trim() === '') return 'is empty: remove it, or name a path inside the target like storage/ or .env';
  if (CONTROL_CHAR.test(value)) return 'contains a control character: remove it';
  if (value.includes('\\')) return "contains a backslash: write a relative path with '/' between directories, like storage/logs";
  if (value.startsWith('/') || value.startsWith('~')) {
    return 'must be relative to the target (no leading / or ~): write it as the path inside the deployed tree, like storage/ or .env';
  }
  const parts = (value.endsWith('/') ? value.slice(0, -1) : value).split('/');
  if (parts.some((p) => p.trim() === '')) return "has an empty component (a doubled '/', or more than one trailing '/'): write each directory once";
  if (parts.includes('..')) return "has a '..' component: a shared path must stay inside the target";
  if (parts.includes('.')) return "has a '.' component: write the path without './' or '/.'";
  if (parts.length === 1 && parts[0] === '.sync_rev') return "is vm-sync's sentinel, which every release writes itself: remove it";
  if (parts[0] === '.git') return 'is .git or inside it, which is never deployed: remove it';
  return null;
}

/**
 * Reads `repository.shared_paths`: every entry checked on its own (one problem each, naming it
 * and its line), then against the others (duplicates, one inside another), the count, and the layout.
 */
function sharedPaths(repo: Section, layout: string | null): SharedPath[] {
  const node = repo.node('shared_paths');
  if (node === undefined || node === null || (isScalar(node) && node.value === null)) return [];
  const where = 'repository.shared_paths';
  if (!isSeq(node)) {
    repo.problem(node, `${where} must be a list of paths inside the target, like [storage/, .env]`);
    return [];
  }
  const items = node.items as Node[];
  const accepted: { entry: SharedPath; raw: string; item: Node }[] = [];
  for (const item of items) {
    const value = isScalar(item) ? (item.value ?? '') : undefined;
    if (typeof value !== 'string') {
      if (isScalar(item)) {
        const written = escaped(String(item.source ?? value));
        repo.problem(item, `${where} entry '${written}' is not a string: quote it ("${written}") if it is a path`);
      } else {
        repo.problem(item, `${where} has an entry that is ${isSeq(item) ? 'a list' : 'a mapping'}: each entry must be a path inside the target, like storage/ or .env`);
      }
      continue;
    }
    const problem = sharedPathProblem(value);
    if (problem) {
      repo.problem(item, `${where} entry '${escaped(value)}' ${problem}`);
      continue;
    }
    const dir = value.endsWith('/');
    accepted.push({ entry: { path: dir ? value.slice(0, -1) : value, dir }, raw: value, item });
  }

  // Duplicates and nesting, by map lookups of each entry's ancestors (not every pair).
  const line = (item: Node): string => {
    const offset = item.range?.[0];
    return offset === undefined ? '?' : String(repo.lineAt(offset));
  };
  const byPath = new Map<string, { raw: string; item: Node }>();
  const unique: typeof accepted = [];
  for (const a of accepted) {
    const first = byPath.get(a.entry.path);
    if (first) {
      repo.problem(a.item, `${where} entry '${escaped(a.raw)}' names the same path as '${escaped(first.raw)}' (line ${line(first.item)}): list it once`);
      continue;
    }
    byPath.set(a.entry.path, a);
    unique.push(a);
  }
  const out: SharedPath[] = [];
  for (const a of unique) {
    const parts = a.entry.path.split('/');
    let outer: { raw: string; item: Node } | undefined;
    for (let i = 1; i < parts.length && !outer; i++) outer = byPath.get(parts.slice(0, i).join('/'));
    if (outer) {
      repo.problem(
        a.item,
        `${where} entry '${escaped(a.raw)}' is inside '${escaped(outer.raw)}' (line ${line(outer.item)}), which is already shared: list only '${escaped(outer.raw)}'`,
      );
      continue;
    }
    out.push(a.entry);
  }

  if (items.length > MAX_SHARED_PATHS) {
    const extra = items[MAX_SHARED_PATHS] as Node;
    const value = isScalar(extra) && typeof extra.value === 'string' ? `'${escaped(extra.value)}'` : 'an entry';
    repo.problem(
      extra,
      `${where} has ${items.length} entries; at most ${MAX_SHARED_PATHS} are allowed (the ${MAX_SHARED_PATHS + 1}st is ${value}): share a common parent directory instead`,
    );
  }
  if (layout === 'in-place' && items.length > 0) {
    const names = accepted.map((a) => `'${escaped(a.raw)}'`);
    const shown = names.length <= 5 ? names.join(', ') : `${names.slice(0, 5).join(', ')} and ${names.length - 5} more`;
    repo.problem(
      repo.keyNode('shared_paths'),
      `${where} (${shown || 'its entries'}) needs layout: atomic; layout: in-place has no releases to share them between: remove shared_paths or set layout: atomic`,
    );
  }
  return out;
}

/** Reads the `rollout:` section; every key is optional. */
function rollout(section: Section): RolloutConfig {
  const strategy = section.string('strategy', 'all-at-once');
  if (strategy !== 'all-at-once' && strategy !== 'rolling') {
    section.problem(section.node('strategy'), `rollout.strategy must be 'all-at-once' or 'rolling', not '${escaped(String(strategy))}'`);
  }
  const healthCommand = section.string('health_command', null);
  if (healthCommand !== null && healthCommand.trim() === '') {
    section.problem(section.node('health_command'), 'rollout.health_command is empty: remove it or set null');
  }
  if (healthCommand?.includes('\0')) {
    section.problem(section.node('health_command'), 'rollout.health_command contains a NUL byte, which no shell command can hold: remove it');
  }
  return {
    strategy: strategy === 'rolling' ? 'rolling' : 'all-at-once',
    batchSize: section.quantity('batch_size', { count: 1 }, 1, 'VMs flipped per batch'),
    maxFailed: section.quantity('max_failed', { count: 0 }, 0, 'failed VMs tolerated before the rollout halts'),
    healthCommand: healthCommand !== null && healthCommand.trim() === '' ? null : healthCommand,
    healthTimeoutS: section.int('health_timeout_s', 60, 1, 3600),
    revertUnhealthy: section.bool('revert_unhealthy', true),
  };
}

/** Validates a path and reports it; returns the normalised path or null. */
function checkedPath(section: Section, key: string, value: string | null, nodeKey = key): string | null {
  if (value === null) return null;
  const problem = pathProblem(value);
  if (problem) {
    section.problem(section.node(nodeKey) ?? section.keyNode(nodeKey), `${section.where}.${key} ${problem}: '${value}'`);
    return null;
  }
  return normalizePath(value);
}

/**
 * Parses and validates config text. Pure: touches no file. Every default of the
 * documented shape is filled in. Throws {@link ConfigError} listing all problems.
 */
export function parseConfig(text: string, source: string, home: string = os.homedir()): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: true });
  const ctx: Context = { problems: [], lines };
  for (const error of doc.errors) {
    ctx.problems.push({ line: error.linePos?.[0]?.line ?? null, message: `YAML: ${error.message.split('\n')[0]}` });
  }
  if (ctx.problems.length > 0) throw new ConfigError(source, ctx.problems);

  const root = new Section(ctx, '', doc.contents as Node | null, ['vms', 'jump_hosts', 'repository', 'remote_execution', 'sync', 'rollout']);
  const repo = root.section('repository', [
    'main_repo_path', 'url', 'remote', 'default_branch', 'vm_repo_paths', 'exclude_dot_git',
    'rsync_excludes', 'layout', 'keep_releases', 'shared_paths', 'secret_scanning',
  ]);
  const remoteExec = root.section('remote_execution', ['key_storage_path', 'known_hosts']);
  const sync = root.section('sync', ['concurrency', 'connect_timeout_s', 'timeout_s', 'retries', 'post_sync_command', 'transfer']);
  const transfer = sync.string('transfer', 'auto');
  if (transfer !== 'auto' && transfer !== 'rsync') sync.problem(sync.node('transfer'), `sync.transfer must be 'auto' or 'rsync', not '${transfer}'`);
  const rolloutSection = root.section('rollout', [
    'strategy', 'batch_size', 'max_failed', 'health_command', 'health_timeout_s', 'revert_unhealthy',
  ]);
  const scanning = repo.section('secret_scanning', ['enabled', 'tool', 'config_path', 'block_on_secrets', 'gitleaks_path', 'timeout_s']);

  const keyStorage = checkedPath(remoteExec, 'key_storage_path', remoteExec.string('key_storage_path', '~/.ssh/vm-sync_keys'));
  const knownHosts = checkedPath(
    remoteExec,
    'known_hosts',
    remoteExec.string('known_hosts', keyStorage ? `${keyStorage}/known_hosts` : null),
  );

  // Per-VM target paths: `default` applies to every VM without its own entry.
  const repoPaths = repo.section('vm_repo_paths', null);
  const pathFor = new Map<string, string>();
  for (const key of repoPaths.keys()) {
    const value = checkedPath(repoPaths, key, repoPaths.string(key, null, true));
    if (value) pathFor.set(key, value);
  }
  if (repoPaths.size === 0) pathFor.set('default', '~/app');

  // Jump hosts (bastions): each with its own key and pinned host key, shared by the VMs behind it.
  const jumpSection = root.section('jump_hosts', null);
  const jumps = new Map<string, JumpHost>();
  for (const name of jumpSection.keys()) {
    if (!VM_ID.test(name)) {
      jumpSection.problem(jumpSection.keyNode(name), `jump host name '${name}' must be letters, digits, '.', '_' or '-'`);
      continue;
    }
    const jump = jumpSection.section(name, ['ip', 'ssh_user', 'ssh_port', 'max_sessions']);
    const host = jump.string('ip', null, true);
    const user = jump.string('ssh_user', null, true);
    const port = jump.int('ssh_port', 22, 1, 65535);
    // Below sshd's default MaxSessions 10 and MaxStartups 10, so a bastion never refuses vm-sync's channels.
    const maxSessions = jump.int('max_sessions', 8, 1, 1000);
    if (host !== null && !HOST.test(host)) jump.problem(jump.node('ip'), `jump_hosts.${name}.ip is not a valid address or host name: '${host}'`);
    if (user !== null && !USER.test(user)) jump.problem(jump.node('ssh_user'), `jump_hosts.${name}.ssh_user is not a valid user name: '${user}'`);
    if (host && user && HOST.test(host) && USER.test(user)) {
      jumps.set(name, { name, host, user, port, maxSessions, keyPath: path.join(expandLocalHome(keyStorage ?? '', home), `id_ed25519_jump_${name}`) });
    }
  }

  const vmsNode = root.node('vms');
  const vmSection = new Section(ctx, 'vms', vmsNode, null);
  if (vmSection.size === 0) root.problem(vmsNode ?? root.keyNode('vms'), 'vms must list at least one VM (vm_id: { ip, ssh_user, ssh_port })');
  const vms: VmConfig[] = [];
  for (const id of vmSection.keys()) {
    if (!VM_ID.test(id) || id === 'default') {
      vmSection.problem(vmSection.keyNode(id), `VM id '${id}' must be letters, digits, '.', '_' or '-' (and not 'default')`);
      continue;
    }
    const vm = vmSection.section(id, ['ip', 'ssh_user', 'ssh_port', 'jump']);
    const host = vm.string('ip', null, true);
    const user = vm.string('ssh_user', null, true);
    const port = vm.int('ssh_port', 22, 1, 65535);
    const jumpName = vm.string('jump', null);
    const jump = jumpName === null ? null : (jumps.get(jumpName) ?? null);
    if (jumpName !== null && !jump && !jumpSection.has(jumpName)) {
      vm.problem(vm.node('jump'), `vms.${id}.jump names unknown jump host '${jumpName}' (jump_hosts: ${jumpSection.keys().join(', ') || 'none'})`);
    }
    if (host !== null && !HOST.test(host)) vm.problem(vm.node('ip'), `vms.${id}.ip is not a valid address or host name: '${host}'`);
    if (user !== null && !USER.test(user)) vm.problem(vm.node('ssh_user'), `vms.${id}.ssh_user is not a valid user name: '${user}'`);
    const repoPath = pathFor.get(id) ?? pathFor.get('default');
    // An entry that is present but invalid was reported already; say nothing more.
    if (!repoPath && !repoPaths.has(id) && !repoPaths.has('default')) {
      vm.problem(vmSection.keyNode(id), `no target path for VM '${id}': add repository.vm_repo_paths.${id} or a 'default'`);
    }
    if (host && user && repoPath && HOST.test(host) && USER.test(user)) {
      vms.push({
        id,
        host,
        user,
        port,
        repoPath,
        keyPath: path.join(expandLocalHome(keyStorage ?? '', home), `id_ed25519_${id}`),
        jump,
      });
    }
  }
  // The known ids, listed once and shortened: each stray entry repeats them, and a fleet can have thousands.
  const ids = vmSection.keys();
  const known = ids.length === 0 ? 'none' : ids.length <= 10 ? ids.join(', ') : `${ids.slice(0, 10).join(', ')} and ${ids.length - 10} more`;
  for (const key of repoPaths.keys()) {
    if (key !== 'default' && !vmSection.has(key)) {
      repoPaths.problem(repoPaths.keyNode(key), `repository.vm_repo_paths names unknown VM '${key}' (known: ${known})`);
    }
  }

  const mainRepoPath = checkedPath(repo, 'main_repo_path', repo.string('main_repo_path', null, true));
  const remote = repo.string('remote', 'origin') ?? 'origin';
  const defaultBranch = repo.string('default_branch', 'main') ?? 'main';
  if (!GIT_NAME.test(remote)) repo.problem(repo.node('remote'), `repository.remote is not a valid remote name: '${remote}'`);
  if (!GIT_NAME.test(defaultBranch) || defaultBranch.includes('..')) {
    repo.problem(repo.node('default_branch'), `repository.default_branch is not a valid branch name: '${defaultBranch}'`);
  }
  const url = repo.string('url', null);
  if (url !== null && (url.startsWith('-') || /\s/.test(url))) repo.problem(repo.node('url'), 'repository.url must not start with - or contain spaces');
  const layout = repo.string('layout', 'atomic');
  if (layout !== 'atomic' && layout !== 'in-place') repo.problem(repo.node('layout'), `repository.layout must be 'atomic' or 'in-place', not '${layout}'`);
  const tool = scanning.string('tool', 'gitleaks');
  if (tool !== 'gitleaks') scanning.problem(scanning.node('tool'), `repository.secret_scanning.tool must be 'gitleaks'`);

  const scanConfigPath = scanning.string('config_path', '.gitleaks.toml') ?? '.gitleaks.toml';
  if (scanConfigPath.startsWith('/') || scanConfigPath.split('/').includes('..') || scanConfigPath.trim() === '') {
    scanning.problem(scanning.node('config_path'), `repository.secret_scanning.config_path must be a path inside the repository, not '${scanConfigPath}'`);
  }
  const gitleaksPath = checkedPath(scanning, 'gitleaks_path', scanning.string('gitleaks_path', null));

  const postSync = sync.string('post_sync_command', null);
  if (postSync !== null && postSync.trim() === '') sync.problem(sync.node('post_sync_command'), 'sync.post_sync_command is empty: remove it or set null');
  // A NUL byte cannot reach a shell (the agent's arguments are C strings): refuse it here, before anything runs.
  if (postSync?.includes('\0')) sync.problem(sync.node('post_sync_command'), 'sync.post_sync_command contains a NUL byte, which no shell command can hold: remove it');

  const config = {
    source,
    vms,
    repository: {
      mainRepoPath: mainRepoPath ? expandLocalHome(mainRepoPath, home) : '',
      url,
      remote,
      defaultBranch,
      excludeDotGit: repo.bool('exclude_dot_git', true),
      rsyncExcludes: repo.stringList('rsync_excludes', ['.git', '__pycache__', '.vscode']),
      layout: (layout === 'in-place' ? 'in-place' : 'atomic') as Layout,
      keepReleases: repo.int('keep_releases', 3, 1, 100),
      sharedPaths: sharedPaths(repo, layout),
      secretScanning: {
        enabled: scanning.bool('enabled', true),
        tool: 'gitleaks' as const,
        configPath: scanConfigPath,
        blockOnSecrets: scanning.bool('block_on_secrets', true),
        gitleaksPath: gitleaksPath ? expandLocalHome(gitleaksPath, home) : null,
        timeoutS: scanning.int('timeout_s', 600, 1, 86400),
      },
    },
    keyStoragePath: keyStorage ? expandLocalHome(keyStorage, home) : '',
    knownHostsPath: knownHosts ? expandLocalHome(knownHosts, home) : '',
    sync: {
      concurrency: sync.int('concurrency', 8, 1, 256),
      connectTimeoutS: sync.int('connect_timeout_s', 10, 1, 300),
      timeoutS: sync.int('timeout_s', 900, 5, 86400),
      retries: sync.int('retries', 3, 0, 10),
      postSyncCommand: postSync,
      transfer: transfer === 'rsync' ? 'rsync' : 'auto',
    },
    rollout: rollout(rolloutSection),
  } satisfies Config;
  if (ctx.problems.length > 0) throw new ConfigError(source, ctx.problems);
  return config;
}

/** The jump hosts the config's VMs use, each once, in the order the VMs name them. */
export function jumpHostsOf(config: Config): JumpHost[] {
  return [...new Map(config.vms.flatMap((vm) => (vm.jump ? [[vm.jump.name, vm.jump] as const] : []))).values()];
}

/** What is wrong with a private key file on the runner host, and the command that fixes it. */
export interface KeyFileProblem {
  /** What is wrong, as a phrase that follows the file's name ("is readable by other users (mode 644)"). */
  problem: string;
  /** What to run or do about it. */
  fix: string;
}

/** The user vm-sync runs as, by name when the system knows it. */
function runningUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

/**
 * Checks one private key file the way OpenSSH would before using it, and a
 * little stricter: it must exist, be a regular file this user can read, be
 * owned by this user (anyone who owns it can replace it), and grant nothing
 * to group or others (OpenSSH refuses such a key: "UNPROTECTED PRIVATE KEY
 * FILE"). Null when it is fine. Only the file's metadata is read here; its
 * content is checked where it is parsed (src/remote/session.ts).
 */
export function keyFileProblem(file: string): KeyFileProblem | null {
  const user = runningUser();
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      return {
        problem: 'does not exist',
        fix: `put the private key there (vm-sync expects it at remote_execution.key_storage_path/${path.basename(file)}), or create one: ssh-keygen -t ed25519 -N '' -f ${file} and authorize ${file}.pub on the host (scripts/bootstrap-runner.sh --config does both)`,
      };
    }
    return { problem: `cannot be looked at by ${user} (${code})`, fix: `let ${user} reach it: check the permissions of ${path.dirname(file)} and its parents` };
  }
  if (!stat.isFile()) return { problem: `is ${stat.isDirectory() ? 'a directory' : 'not a regular file'}`, fix: `replace it with the private key file (vm-sync expects it at remote_execution.key_storage_path/${path.basename(file)})` };
  const uid = process.getuid?.();
  const mode = stat.mode & 0o777;
  const foreign = uid !== undefined && stat.uid !== uid;
  const open = (mode & 0o077) !== 0;
  if (foreign || open) {
    const shown = mode.toString(8).padStart(3, '0');
    const access = mode & 0o044 ? 'readable by other users' : mode & 0o022 ? 'writable by other users' : 'open to other users';
    const parts = [
      ...(foreign ? [`is owned by uid ${stat.uid}, not by ${user} who runs vm-sync`] : []),
      ...(open ? [`${foreign ? 'and ' : 'is '}${access} (mode ${shown}): OpenSSH refuses such a key, and so does vm-sync`] : []),
    ];
    const commands = [...(foreign ? [`chown ${user} ${file}`] : []), ...(open ? [`chmod 600 ${file}`] : [])];
    return { problem: parts.join(', '), fix: `run ${commands.join(' && ')}` };
  }
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    return { problem: `is not readable by ${user} (mode ${mode.toString(8).padStart(3, '0')})`, fix: `run chmod 600 ${file}` };
  }
  return null;
}

/**
 * Checks what the whole run needs on the runner host: the pinned known_hosts
 * file. Returns problems; touches nothing. Each VM's (and jump host's) key is
 * checked when that VM is connected to ({@link keyFileProblem}), so a bad key
 * fails that VM alone (`key_invalid`), never the run.
 */
export function checkConfigFiles(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const file = config.knownHostsPath;
  try {
    fs.accessSync(file, fs.constants.R_OK);
    if (!fs.statSync(file).isFile()) problems.push({ line: null, message: `pinned known_hosts (remote_execution.known_hosts) is not a regular file: ${file}` });
  } catch {
    problems.push({ line: null, message: `pinned known_hosts (remote_execution.known_hosts) not found or not readable: ${file}` });
  }
  return problems;
}

/**
 * Reads, validates and checks a config file; throws {@link ConfigError} with
 * every problem. `checkFiles: false` skips the known_hosts check, for commands
 * that never reach a VM (`scan` on a CI checkout has none) or that report it
 * themselves (`doctor`). SSH keys are never checked here: see {@link keyFileProblem}.
 */
export function loadConfig(file: string, options: { checkFiles?: boolean } = {}): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(file, [{ line: null, message: `cannot read config file: ${(error as NodeJS.ErrnoException).code ?? error}` }]);
  }
  const config = parseConfig(text, file);
  const problems = options.checkFiles === false ? [] : checkConfigFiles(config);
  if (problems.length > 0) throw new ConfigError(file, problems);
  return config;
}
