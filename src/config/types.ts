/** One VM of the fleet, with everything the engine needs to reach it. */
export interface VmConfig {
  id: string;
  /** Address as written in the config (IP or host name). */
  host: string;
  user: string;
  port: number;
  /** Target path on the VM: absolute, or `~/...` (expanded by the VM's shell for the SSH user). */
  repoPath: string;
  /** Private key on the runner host: `key_storage_path/id_ed25519_{id}`. */
  keyPath: string;
  /** The jump host (bastion) the VM is reached through; null: directly. */
  jump?: JumpHost | null;
}

/**
 * A jump host (`jump_hosts.<name>`): a bastion the runner host reaches, which
 * reaches the VMs behind it. Its host key is pinned like a VM's; all VMs
 * behind it share one connection to it, with their SSH connections forwarded
 * through it as channels.
 */
export interface JumpHost {
  name: string;
  host: string;
  user: string;
  port: number;
  /** At most this many VM connections through it at a time (default 8). */
  maxSessions: number;
  /** `key_storage_path/id_ed25519_jump_<name>`. */
  keyPath: string;
}

export type Layout = 'atomic' | 'in-place';

export interface SecretScanningConfig {
  enabled: boolean;
  tool: 'gitleaks';
  /** Path of the repository's gitleaks config, relative to the repository root. */
  configPath: string;
  blockOnSecrets: boolean;
  /** An explicit gitleaks binary; null: `$VM_SYNC_GITLEAKS`, then PATH. */
  gitleaksPath: string | null;
  /** The whole scan's time limit in seconds (`timeout_s`); a scan that reaches it fails closed. */
  timeoutS: number;
}

/**
 * A file or directory that outlives releases (atomic layout only). It lives on the VM
 * under vm-sync's state directory, `~/.app.vm-sync/shared/<path>`, and every release
 * has a symlink at `path` pointing there.
 */
export interface SharedPath {
  /** Relative to the target, `/`-separated, without a trailing slash. */
  path: string;
  /** True when the entry was written with a trailing `/`: a directory; false: a file. */
  dir: boolean;
}

/** A number of VMs: absolute, or a percentage of the selected VMs (see `resolveQuantity`). */
export type Quantity = { count: number } | { percent: number };

export type RolloutStrategy = 'all-at-once' | 'rolling';

/** The `rollout:` section: how a release's flip is spread over the fleet and checked. */
export interface RolloutConfig {
  strategy: RolloutStrategy;
  /** rolling: VMs flipped per batch (a count >= 1, or 1..100 percent). */
  batchSize: Quantity;
  /** Failed VMs tolerated before the rollout halts (a count >= 0, or 0..100 percent). */
  maxFailed: Quantity;
  /** Run on the VM in the new release after its flip; null: no health check. */
  healthCommand: string | null;
  healthTimeoutS: number;
  /** Flip an unhealthy VM back to the release it had. */
  revertUnhealthy: boolean;
}

export interface RepositoryConfig {
  /** The runner host's clone (absolute, `~` expanded). */
  mainRepoPath: string;
  url: string | null;
  remote: string;
  defaultBranch: string;
  excludeDotGit: boolean;
  rsyncExcludes: string[];
  layout: Layout;
  keepReleases: number;
  /** `shared_paths`: kept across releases (atomic layout only); default []. */
  sharedPaths: SharedPath[];
  secretScanning: SecretScanningConfig;
}

export interface SyncSettings {
  concurrency: number;
  connectTimeoutS: number;
  timeoutS: number;
  retries: number;
  postSyncCommand: string | null;
  /**
   * `auto`: a VM whose release vm-sync sealed gets only the changes, as one
   * stream made once per starting commit (rsync when that cannot apply);
   * `rsync`: always rsync with --checksum.
   */
  transfer: 'auto' | 'rsync';
}

/** The validated configuration: every default filled in, every path checked. */
export interface Config {
  /** The file it was loaded from (for messages). */
  source: string;
  vms: VmConfig[];
  repository: RepositoryConfig;
  keyStoragePath: string;
  knownHostsPath: string;
  sync: SyncSettings;
  rollout: RolloutConfig;
}
