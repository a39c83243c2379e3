import fs from 'node:fs';
import { count } from '../words.js';
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../config/types.js';
import { getErrorMessage } from '../errors.js';
import { cloneLockPath, describeHolder, readCloneLock } from '../git/clone-lock.js';
import { anonymizeUrls } from '../git/repo.js';
import { run } from '../local/run.js';
import { holderIsDead } from '../remote/lock.js';
import { vmText } from '../remote/untrusted.js';
import { checkGitleaksLogs, locateGitleaks } from '../scan/gitleaks.js';
import { DEFAULT_GITLEAKS_VERSION } from '../scan/pinned.js';
import type { Check } from './doctor.js';

/*
 * The runner host's part of `vm-sync doctor`: what every sync needs here
 * before it reaches any VM, checked once per run. Read-only: nothing here
 * writes, fetches or takes a lock.
 */

/** How long `git fsck --connectivity-only` may take before doctor stops it (~2 s for ~500k objects here). */
export const FSCK_BUDGET_MS = 30_000;

const check = (name: Check['name'], status: Check['status'], detail: string, hint: string | null = null): Check => ({ name, status, detail, hint });

/** The pinned known_hosts file: without it, every VM is refused. */
export function knownHostsCheck(config: Config): Check {
  const file = config.knownHostsPath;
  try {
    fs.accessSync(file, fs.constants.R_OK);
    if (!fs.statSync(file).isFile()) throw new Error('not a file');
  } catch {
    return check('known_hosts', 'fail', `${file} (remote_execution.known_hosts) is missing or not a readable file: every command that reaches a VM stops before it starts`, `pin each VM's host key there: ssh-keyscan -p PORT HOST, compare the fingerprint with the one on the VM's console, append the line (scripts/bootstrap-runner.sh --config does it)`);
  }
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() && !l.trim().startsWith('#')).length;
  return check('known_hosts', 'ok', `${file}: ${count(lines, 'pinned key line')}`);
}

/**
 * gitleaks as the sync's scan will use it: found where sync looks, its
 * version against the one vm-sync pins, and the probe the scan runs first
 * (it must log what it skips the way vm-sync reads it, or every scan fails
 * closed with scan_failed).
 */
export async function gitleaksCheck(config: Config): Promise<Check> {
  const settings = config.repository.secretScanning;
  const pinned = DEFAULT_GITLEAKS_VERSION;
  const install = `install gitleaks ${pinned} (https://github.com/gitleaks/gitleaks/releases/tag/v${pinned}) on PATH or set repository.secret_scanning.gitleaks_path (the Action downloads the pinned release itself when gitleaks is not on PATH)`;
  if (!settings.enabled) return check('gitleaks', 'skipped', 'secret scanning is disabled (repository.secret_scanning.enabled: false): deploys are not scanned', 'enable it unless another gate scans every commit before it reaches the deployed branch');
  let binary: string;
  try {
    binary = locateGitleaks(settings.gitleaksPath);
  } catch (error) {
    return check('gitleaks', 'fail', `${getErrorMessage(error)} Every sync fails with gitleaks_missing.`, install);
  }
  // A build from source answers "version is set by build process": no version at all.
  const answer = await run(binary, ['version'], { signal: AbortSignal.timeout(10_000) }).catch(() => null);
  const version = answer ? (/\bv?(\d+\.\d+\.\d+)\b/.exec(answer.stdout)?.[1] ?? null) : null;
  try {
    await checkGitleaksLogs(binary, { deadline: Date.now() + 60_000, timeoutS: 60 });
  } catch (error) {
    return check('gitleaks', 'fail', `gitleaks ${version ?? '(version unknown)'} at ${binary}: ${getErrorMessage(error)} Every sync fails with scan_failed.`, install);
  }
  const series = (v: string): string => v.split('.').slice(0, 2).join('.');
  if (version === null) {
    return check('gitleaks', 'ok', `gitleaks at ${binary} (it does not report its version: a build from source?) passed the probe every scan runs first; vm-sync pins ${pinned}`);
  }
  if (series(version) !== series(pinned)) {
    return check('gitleaks', 'warn', `gitleaks ${version} at ${binary} is not the ${series(pinned)} series vm-sync pins (${pinned}); it passed the probe every scan runs first, so scans work`, `install gitleaks ${pinned} to scan exactly as the Action does`);
  }
  return check('gitleaks', 'ok', `gitleaks ${version} at ${binary} (pinned: ${pinned}); it passed the probe every scan runs first`);
}

function gitEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: '', LC_ALL: 'C' };
}

/** The first line of git's error output, cleaned, for a detail. */
function firstLine(text: string): string {
  return vmText(anonymizeUrls(text.trim().split('\n')[0] ?? ''), 300);
}

/** A URL or path reduced to what names the repository: host and path, without credentials, `.git` or a trailing `/`. */
export function repositoryKey(url: string): string {
  const scp = /^(?:[^/@:\s]+@)?([^/:\s]+):(?!\/\/)(.+)$/.exec(url);
  const trim = (p: string): string => p.replace(/\/+$/, '').replace(/\.git$/, '').replace(/^\/+/, '');
  if (scp && !/^[A-Za-z]:\\/.test(url) && !url.includes('://')) return `${scp[1].toLowerCase()}/${trim(scp[2])}`;
  try {
    const parsed = new URL(url);
    if (parsed.protocol === 'file:') return `file:${trim(path.resolve(decodeURIComponent(parsed.pathname)))}`;
    return `${parsed.hostname.toLowerCase()}${parsed.port && !['80', '443', '22'].includes(parsed.port) ? `:${parsed.port}` : ''}/${trim(decodeURIComponent(parsed.pathname))}`;
  } catch {
    return `file:${trim(path.resolve(url))}`;
  }
}

/** Work git left half-done in a clone: a person is (or was) working in it. */
const IN_PROGRESS: ReadonlyArray<[string, string, string]> = [
  ['rebase-merge', 'a rebase', 'git -C DIR rebase --abort'],
  ['rebase-apply', 'a rebase or git am', 'git -C DIR rebase --abort (or git am --abort)'],
  ['MERGE_HEAD', 'a merge', 'git -C DIR merge --abort'],
  ['CHERRY_PICK_HEAD', 'a cherry-pick', 'git -C DIR cherry-pick --abort'],
  ['REVERT_HEAD', 'a revert', 'git -C DIR revert --abort'],
  ['BISECT_LOG', 'a bisect', 'git -C DIR bisect reset'],
];

/**
 * The runner-host clone as the next sync will find it: one check per thing
 * found, each named `clone`. Also answers the clone's remote URL (for
 * `--github` when the config has no `repository.url`).
 */
export async function cloneChecks(config: Config): Promise<{ checks: Check[]; remoteUrl: string | null }> {
  const { mainRepoPath: dir, remote, defaultBranch, url } = config.repository;
  const checks: Check[] = [];
  const add = (status: Check['status'], detail: string, hint: string | null = null): void => {
    checks.push(check('clone', status, detail, hint));
  };
  const user = (() => {
    try {
      return os.userInfo().username;
    } catch {
      return 'the runner user';
    }
  })();
  const shownUrl = url ? anonymizeUrls(url) : null;

  if (!fs.existsSync(dir)) {
    if (!url) {
      add('fail', `${dir} (repository.main_repo_path) does not exist and repository.url is not set: sync has nothing to clone`, `set repository.url, or clone it there yourself: git clone --branch ${defaultBranch} URL ${dir}`);
      return { checks, remoteUrl: null };
    }
    let existing = path.dirname(dir);
    while (!fs.existsSync(existing) && path.dirname(existing) !== existing) existing = path.dirname(existing);
    try {
      fs.accessSync(existing, fs.constants.W_OK);
    } catch {
      add('fail', `${dir} does not exist, and ${existing} is not writable by ${user}: the first sync cannot clone it`, `mkdir -p ${path.dirname(dir)} && chown ${user} ${path.dirname(dir)}`);
      return { checks, remoteUrl: url };
    }
    add('ok', `${dir} is not cloned yet: the first sync clones ${shownUrl} (branch ${defaultBranch}) into it`);
    return { checks, remoteUrl: url };
  }

  const git = (...args: string[]) => run('git', ['-C', dir, ...args], { env: gitEnv() });
  const aside = `${dir}.corrupt-<UTC time>`;
  const reclone = (why: string): void => {
    if (url) add('warn', `${dir} ${why}: the next sync moves it to ${aside} and clones ${shownUrl} again`, `nothing to do if that is expected; to keep what is in ${dir}, move it elsewhere first`);
    else add('fail', `${dir} ${why}, and repository.url is not set: sync cannot clone it again and fails with git_failed`, `set repository.url, or repair the clone by hand`);
  };
  if (!fs.statSync(dir).isDirectory() || !fs.existsSync(path.join(dir, '.git'))) {
    reclone('is not a git clone (no .git)');
    return { checks, remoteUrl: url };
  }
  const head = await git('rev-parse', '--verify', '--quiet', 'HEAD^{tree}');
  if (head.code !== 0) {
    reclone(`has no usable HEAD${head.stderr.trim() ? ` (${firstLine(head.stderr)})` : ''}`);
    return { checks, remoteUrl: url };
  }

  // Where sync fetches from: the clone's own remote, whatever repository.url says.
  const configured = await git('config', '--get', `remote.${remote}.url`);
  const remoteUrl = configured.code === 0 && configured.stdout.trim() ? configured.stdout.trim() : null;
  if (!remoteUrl) {
    add('fail', `${dir} has no remote '${remote}' (repository.remote): every sync fails to fetch`, `git -C ${dir} remote add ${remote} ${url ?? 'URL'}`);
  } else if (url && repositoryKey(remoteUrl) !== repositoryKey(url)) {
    add('fail', `${dir} fetches from ${anonymizeUrls(remoteUrl)}, not from repository.url ${shownUrl}: sync would deploy that repository's commits`, `git -C ${dir} remote set-url ${remote} ${shownUrl} (or correct repository.url)`);
  }

  const gitDir = path.join(dir, '.git');
  for (const [marker, what, abort] of IN_PROGRESS) {
    if (fs.existsSync(path.join(gitDir, marker))) {
      add('warn', `${what} is in progress in ${dir}: someone works in vm-sync's clone by hand; the next sync resets and cleans it, and their changes there are lost`, `finish or abort it (${abort.replace('DIR', dir)}), and work in a clone of your own`);
    }
  }

  const lock = cloneLockPath(dir);
  const lockPresent = fs.lstatSync(lock, { throwIfNoEntry: false }) !== undefined;
  const holder = lockPresent ? readCloneLock(lock) : null;
  const liveRun = holder !== null && !holderIsDead(holder);
  if (lockPresent && holder === null) {
    add('fail', `${lock} is not a lock vm-sync can read: a sync waits for it 300 s (VM_SYNC_CLONE_WAIT_S) and fails with runner_busy`, `if no vm-sync run is working on this host: rm ${lock}`);
  } else if (liveRun) {
    add('warn', `a vm-sync run holds the clone: ${describeHolder(holder)}; a sync now waits for it up to 300 s (VM_SYNC_CLONE_WAIT_S), then fails with runner_busy`, 'wait for that run to finish');
  }

  // git's own lock files: one left by a killed git makes every reset (and fetch) of the clone fail.
  const refLock = (ref: string): string => path.join(gitDir, ...ref.split('/')) + '.lock';
  for (const file of [path.join(gitDir, 'index.lock'), path.join(gitDir, 'HEAD.lock'), path.join(gitDir, 'config.lock'), path.join(gitDir, 'packed-refs.lock'), path.join(gitDir, 'shallow.lock'), refLock(`refs/remotes/${remote}/${defaultBranch}`)]) {
    let age: number;
    try {
      age = Math.round((Date.now() - fs.lstatSync(file).mtimeMs) / 1000);
    } catch {
      continue;
    }
    if (liveRun) add('warn', `${file} exists (${age} s old), probably the running vm-sync's`, 'wait for that run to finish');
    else add('fail', `${file} exists (${age} s old): git refuses to change the clone while it is there, so every sync fails with git_failed`, `if no git process works in ${dir} (ps -ef | grep git): rm ${file}`);
  }

  // Connectivity of everything reachable, under a budget: a missing object is found here, not mid-deploy.
  const started = Date.now();
  const fsck = await run('git', ['-C', dir, 'fsck', '--connectivity-only', '--no-progress'], { env: gitEnv(), signal: AbortSignal.timeout(FSCK_BUDGET_MS), maxOutput: 64 * 1024 });
  const took = ((Date.now() - started) / 1000).toFixed(1);
  let connectivity = `objects connected (git fsck --connectivity-only, ${took} s)`;
  if (fsck.signal) {
    connectivity = `connectivity not checked (git fsck --connectivity-only took over ${FSCK_BUDGET_MS / 1000} s)`;
  } else if (fsck.code !== 0) {
    const said = firstLine(fsck.stderr || fsck.stdout);
    if (url || remoteUrl) add('warn', `git fsck --connectivity-only finds the clone damaged (${said}): the next sync moves it to ${aside} when a step meets the damage, and clones again`, `to do it now: mv ${dir} ${dir}.damaged && vm-sync sync`);
    else add('fail', `git fsck --connectivity-only finds the clone damaged (${said}), and there is no URL to clone it again from`, 'set repository.url, or repair the clone by hand');
  }
  if (checks.length === 0) add('ok', `${dir}: a git clone fetching ${defaultBranch} from ${anonymizeUrls(remoteUrl ?? '?')}; ${connectivity}`);
  return { checks, remoteUrl };
}
