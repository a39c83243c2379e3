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
  secretScanning: SecretScanningConfig;
}

export interface SyncSettings {
  concurrency: number;
  connectTimeoutS: number;
  timeoutS: number;
  retries: number;
  postSyncCommand: string | null;
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
}
