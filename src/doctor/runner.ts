import fs from 'node:fs';
import path from 'node:path';

/**
 * The oldest GitHub Actions runner that GitHub lets configure, register again
 * or connect. An older `config.sh` fails with "Your runner version is out of
 * date and can no longer register with GitHub"; an older registered runner is
 * refused with "Runner version vX is deprecated and cannot receive messages".
 * Source: GitHub changelog, 2026-06-12, "GitHub Actions: minimum version
 * enforcement timeline for self-hosted runners"
 * (https://github.blog/changelog/2026-06-12-github-actions-minimum-version-enforcement-timeline-for-self-hosted-runners/)
 * and https://github.com/orgs/community/discussions/194762: "To configure or
 * (re)register a runner: the runner must be on version 2.329.0 or later".
 * (Running jobs also needs each new release within 30 days of it; the
 * runner's self-update does that.) Change it here and in the README only.
 */
export const MIN_RUNNER_VERSION = '2.329.0';

/** Where scripts/bootstrap-runner.sh installs the runner unless told `--dir`. */
export const DEFAULT_RUNNER_DIR = '/opt/actions-runner';

/** Overrides the runner directory; the installed `vm-sync` command sets it to the directory it was installed for. */
export const RUNNER_DIR_ENV = 'VM_SYNC_RUNNER_DIR';

/** The runner-host check of `vm-sync doctor`, made once per run (not per VM). */
export interface RunnerHostCheck {
  name: 'runner';
  /** `warn` when no runner is found: doctor may run somewhere that is not a runner host. */
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  /** What to do about a warn or fail. */
  hint: string | null;
  /** The runner directory looked at. */
  dir: string;
  /** The installed runner's version, null when not found. */
  version: string | null;
  minimum: string;
}

const VERSION = /^(\d{1,6})\.(\d{1,6})\.(\d{1,6})$/;

/** Compares two `X.Y.Z` versions numerically (2.99.0 is older than 2.329.0). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) if (pa[i] !== pb[i]) return pa[i] - pb[i];
  return 0;
}

/** The runner's version from its .NET manifest: the `Runner.Listener/X.Y.Z` entry (under libraries and targets). */
function fromDepsJson(dir: string): string | null {
  const file = path.join(dir, 'bin', 'Runner.Listener.deps.json');
  let manifest: unknown;
  try {
    // The real one is a few hundred KB; anything far larger is not it.
    if (fs.statSync(file).size > 16 * 1024 * 1024) return null;
    manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
  if (!manifest || typeof manifest !== 'object') return null;
  const { libraries, targets } = manifest as { libraries?: unknown; targets?: unknown };
  const tables = [libraries, ...(targets && typeof targets === 'object' ? Object.values(targets) : [])];
  for (const table of tables) {
    if (!table || typeof table !== 'object') continue;
    for (const key of Object.keys(table)) {
      const match = /^Runner\.Listener\/(.+)$/.exec(key);
      if (match && VERSION.test(match[1])) return match[1];
    }
  }
  return null;
}

/**
 * The installed runner's version and where it was read, or null. Read from
 * files, never by running `bin/Runner.Listener --version`: the runner user
 * (and so any job) can rewrite that binary, and doctor may run as root.
 * In order: the .NET manifest of `bin/` (which follows the `bin -> bin.X.Y.Z`
 * link a self-update leaves), the name of that link's target, and the
 * version the bootstrap installed (stale once the runner updated itself).
 */
export function readRunnerVersion(dir: string): { version: string; source: string } | null {
  const deps = fromDepsJson(dir);
  if (deps) return { version: deps, source: 'bin/Runner.Listener.deps.json' };
  try {
    const target = path.basename(fs.readlinkSync(path.join(dir, 'bin')));
    const match = /^bin\.(.+)$/.exec(target);
    if (match && VERSION.test(match[1])) return { version: match[1], source: `the bin -> ${target} link` };
  } catch {
    // not a link: a runner that never updated itself
  }
  try {
    const marker = fs.readFileSync(path.join(dir, '.vm-sync-runner-version'), 'utf8').trim();
    if (VERSION.test(marker)) return { version: marker, source: '.vm-sync-runner-version (what the bootstrap installed)' };
  } catch {
    // not installed by the bootstrap
  }
  return null;
}

/**
 * Is the GitHub Actions runner on this host new enough to register and
 * connect? The directory is `$VM_SYNC_RUNNER_DIR`, else the bootstrap's
 * default. No runner there is a warning (doctor also runs on laptops), an
 * unreadable version too; a runner older than {@link MIN_RUNNER_VERSION} fails.
 */
export function checkRunnerHost(env: NodeJS.ProcessEnv = process.env): RunnerHostCheck {
  const fromEnv = env[RUNNER_DIR_ENV]?.trim();
  const dir = fromEnv ? path.resolve(fromEnv) : DEFAULT_RUNNER_DIR;
  const base = { name: 'runner' as const, dir, minimum: MIN_RUNNER_VERSION };
  const install = 'on the runner host: scripts/bootstrap-runner.sh install (README: Setting up the runner host)';
  let isDir = false;
  try {
    isDir = fs.statSync(dir).isDirectory();
  } catch {
    // missing
  }
  if (!isDir || !fs.existsSync(path.join(dir, 'config.sh'))) {
    return {
      ...base,
      status: 'warn',
      version: null,
      detail: `no GitHub Actions runner found in ${dir}${fromEnv ? ` (${RUNNER_DIR_ENV})` : ''}: fine if this is not the runner host`,
      hint: `${install}; or, if the runner is elsewhere, set ${RUNNER_DIR_ENV} to its directory`,
    };
  }
  const found = readRunnerVersion(dir);
  if (!found) {
    return {
      ...base,
      status: 'warn',
      version: null,
      detail: `runner in ${dir}, but its version is unreadable (no bin/Runner.Listener.deps.json, bin.X.Y.Z link or .vm-sync-runner-version)`,
      hint: `check that ${dir} holds a complete runner package; ${dir}/bin/Runner.Listener --version prints its version (GitHub needs ${MIN_RUNNER_VERSION} or later)`,
    };
  }
  if (compareVersions(found.version, MIN_RUNNER_VERSION) < 0) {
    return {
      ...base,
      status: 'fail',
      version: found.version,
      detail: `runner ${found.version} in ${dir} is older than ${MIN_RUNNER_VERSION}, the oldest GitHub lets register or connect: the sync job would never start`,
      hint: `upgrade the runner: ${install} (it pins a newer one), or unpack a release of ${MIN_RUNNER_VERSION} or later from https://github.com/actions/runner/releases into ${dir} and register it again`,
    };
  }
  return {
    ...base,
    status: 'ok',
    version: found.version,
    detail: `runner ${found.version} in ${dir} (GitHub's minimum for registration: ${MIN_RUNNER_VERSION}; read from ${found.source})`,
    hint: null,
  };
}
