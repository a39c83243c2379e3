import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeScratchDir } from '../local/scratch.js';
import { VmSyncError } from '../errors.js';
import { printable } from './findings.js';

/**
 * Which gitleaks scans: the key of the scan cache and of the probe record.
 *
 * Its version string is not enough. A build from source answers "version is
 * set by build process" whatever its rules (gitleaks compiles its default
 * rules in), and two builds of one version can differ in their regex engine
 * (releases use RE2 through WebAssembly, `go install` Go's own). So the key is
 * the SHA-256 of the executable's bytes, which also spares a `gitleaks
 * version` run: a release build pays about 0.25 s of start-up for each.
 */
export interface GitleaksIdentity {
  /** Hex SHA-256 of the executable (and, when it is not exact, of its `version` answer too). */
  digest: string;
  /**
   * Whether the digest covers the code that scans: a Go executable whose main
   * module is gitleaks'. Anything else at that path (a wrapper script, a
   * version manager's shim such as aqua-proxy or mise, which are executables
   * too) starts another program, which can change under the same bytes: its
   * key also holds the `version` it answers, and no probe result is recorded
   * for it beyond one process.
   */
  exact: boolean;
  /** The file as it was read: a scan that finds it changed records nothing (see {@link unchangedSince}). */
  file: FileStamp;
  /** What `version` answered, asked from a private directory (only when not exact). */
  version?: string;
}

/** What tells one state of a file from another without reading it. */
export interface FileStamp {
  dev: number;
  ino: number;
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/** gitleaks' main module, as its Go build information names it. */
const GITLEAKS_MODULE = 'github.com/zricethezav/gitleaks/v8';
/** The start of a Go executable's build information (Go aligns it to 16 bytes). */
const BUILDINFO_MAGIC = Buffer.from('\xff Go buildinf:', 'latin1');
/** Read size; a multiple of 16, so an aligned magic never straddles two reads. */
const CHUNK = 1024 * 1024;
/** The most of the build information read after its magic. */
const BUILDINFO_MAX = 64 * 1024;

/**
 * Identifies the gitleaks at `binary` (see {@link GitleaksIdentity}). Rejects
 * when it cannot be read, or when a `version` it must be asked fails: the
 * message then says only how it ended (a broken gitleaks may print anything,
 * a secret it was scanning included).
 */
export async function identifyGitleaks(binary: string): Promise<GitleaksIdentity> {
  const handle = await fs.promises.open(binary, 'r');
  try {
    const stat = await handle.stat({ bigint: true });
    const hash = crypto.createHash('sha256');
    // One buffer, reused: the executable is 20-30 MB and the runner host's memory is a target.
    const buffer = Buffer.allocUnsafe(CHUNK);
    let position = 0;
    let buildinfo = -1;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, CHUNK, position);
      if (bytesRead === 0) break;
      const chunk = buffer.subarray(0, bytesRead);
      hash.update(chunk);
      if (buildinfo < 0) buildinfo = alignedMagic(chunk, position);
      position += bytesRead;
    }
    const exact = buildinfo >= 0 && (await mainModuleAt(handle, buildinfo)) === GITLEAKS_MODULE;
    const version = exact ? undefined : await inPrivateDir((dir) => gitleaksVersion(binary, dir));
    if (version !== undefined) hash.update('\0version\0').update(version);
    const file = { dev: Number(stat.dev), ino: Number(stat.ino), size: Number(stat.size), mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs };
    return { digest: hash.digest('hex'), exact, file, ...(version !== undefined ? { version } : {}) };
  } finally {
    await handle.close();
  }
}

/** Whether the file at `binary` is still the one identified (same inode, size and times): false when it cannot be read. */
export function unchangedSince(binary: string, identity: GitleaksIdentity): boolean {
  try {
    const now = fs.statSync(binary, { bigint: true });
    const was = identity.file;
    return Number(now.dev) === was.dev && Number(now.ino) === was.ino && Number(now.size) === was.size && now.mtimeNs === was.mtimeNs && now.ctimeNs === was.ctimeNs;
  } catch {
    return false;
  }
}

/** The file offset of the first 16-byte-aligned build-information magic in `chunk` (read at `offset`), or -1. */
function alignedMagic(chunk: Buffer, offset: number): number {
  for (let at = chunk.indexOf(BUILDINFO_MAGIC); at >= 0; at = chunk.indexOf(BUILDINFO_MAGIC, at + 1)) {
    if ((offset + at) % 16 === 0) return offset + at;
  }
  return -1;
}

/**
 * The main module a Go executable's build information names (Go 1.18+:
 * a 32-byte header, then the Go version and the module information as
 * length-prefixed strings; the latter starts with a 16-byte sentinel, then
 * `path\t<main package>`), or null when it cannot be read that way.
 */
async function mainModuleAt(handle: fs.promises.FileHandle, offset: number): Promise<string | null> {
  const info = Buffer.alloc(BUILDINFO_MAX);
  const { bytesRead } = await handle.read(info, 0, BUILDINFO_MAX, offset);
  const bytes = info.subarray(0, bytesRead);
  // Flag 2: the strings follow the header (older layouts point into memory instead).
  if (bytes.length < 32 || (bytes[15] & 2) === 0) return null;
  let at = 32;
  const string = (): Buffer | null => {
    let length = 0;
    for (let shift = 0; at < bytes.length && shift < 28; shift += 7) {
      const byte = bytes[at++];
      length |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) {
        if (at + length > bytes.length) return null;
        const value = bytes.subarray(at, at + length);
        at += length;
        return value;
      }
    }
    return null;
  };
  if (string() === null) return null; // the Go version
  const modinfo = string();
  if (modinfo === null || modinfo.length < 16) return null;
  const first = modinfo.subarray(16).toString('latin1').split('\n', 1)[0];
  return first.startsWith('path\t') ? first.slice('path\t'.length) : null;
}

/**
 * Proves that the gitleaks at `binary` is the same program when started in
 * `dir`, a directory that holds files of the commit being scanned (gitleaks'
 * dir mode must run there: the paths it reports, and so the config's path
 * rules and `.gitleaksignore`, are relative to it). An executable whose Go
 * build information names gitleaks' module reads no file to decide what it
 * is. Anything else (a version manager's shim: asdf and mise read
 * `.tool-versions` and `mise.toml`, aqua `aqua.yaml`, from the directory it
 * starts in and its parents) could let the commit choose which gitleaks scans
 * it, so the scan fails with `scan_failed`:
 * - without starting it at all, when a version manager's file (see
 *   {@link TOOL_CONFIG}) stands in `dir`, in a parent of it, or in or above
 *   the temporary directory: a shim started there might run a program the
 *   commit holds, even only to answer `version`;
 * - otherwise, when its `version` asked in `dir` differs from its answer in
 *   a private directory (a wrapper steered by a file not on that list).
 *
 * A shim that picks another build of the same version, through a file not
 * on the list, is not told apart (see the README).
 */
export async function requireSameGitleaksIn(binary: string, identity: GitleaksIdentity | null, dir: string): Promise<void> {
  if (identity?.exact) return;
  // Not even asked its version there: with `.tool-versions` naming `gitleaks path:./tools/gl`, asdf's shim
  // runs a program of the commit, which may answer as gitleaks does (and runs on the runner host as it likes).
  const config = toolConfigIn(dir) ?? toolConfigIn(os.tmpdir());
  if (config) {
    throw new VmSyncError(
      'scan_failed',
      `${binary} is not a gitleaks executable itself (a version manager's shim or a wrapper), and ${printable(config)} stands in the tree being scanned or above it, where a version manager reads it to choose what runs: vm-sync does not start it there (the commit, or whoever wrote that file, could choose the scanner). Set repository.secret_scanning.gitleaks_path to the gitleaks executable itself (\`mise which gitleaks\`, \`asdf which gitleaks\`).`,
    );
  }
  const outcome = (cwd: string): Promise<string> => gitleaksVersion(binary, cwd).then((answer) => `answers ${JSON.stringify(answer.slice(0, 80))}`, (error: unknown) => (error instanceof Error ? error.message : 'fails'));
  const elsewhere = identity?.version !== undefined ? `answers ${JSON.stringify(identity.version.slice(0, 80))}` : await inPrivateDir(outcome);
  const here = await outcome(dir);
  if (here !== elsewhere) {
    throw new VmSyncError(
      'scan_failed',
      `${binary} is not the same program inside the tree being scanned: its \`version\` ${elsewhere} from a private directory and ${here} there. It is not a gitleaks executable itself (a version manager's shim or a wrapper), and files of the commit (.tool-versions, mise.toml, aqua.yaml) may choose what it runs. Set repository.secret_scanning.gitleaks_path to the gitleaks executable itself.`,
    );
  }
}

/**
 * Names by which version managers choose a tool's version or program, in the
 * directory a program starts in and in every parent of it: asdf and mise
 * (`.tool-versions`, `mise.toml`, `.mise.local.toml`, `mise/config.toml`,
 * and rtx, mise's old name), aqua (`aqua.yaml`, `aqua/`), proto
 * (`.prototools`), pkgx (`pkgx.yaml`). `.config/` is searched for the same
 * names, and `bin/` for hermit's `hermit.hcl`. (direnv and devbox act
 * through a shell's hook, never on a program started by another.)
 */
const TOOL_CONFIG = /^(?:\.tool-versions|\.?(?:mise|rtx)(?:\.[\w.-]+)?\.toml|\.?(?:mise|rtx|aqua)|\.?aqua\.ya?ml|\.prototools(?:\.[\w.-]+)?|\.?pkgx\.ya?ml)$/i;

/**
 * The first tool-version config (see {@link TOOL_CONFIG}) in `dir` or any
 * parent of it, as a path, or null: the tree's own files, and whatever
 * stands above it (a clone inside a workspace checkout, a shared /tmp).
 */
function toolConfigIn(dir: string): string | null {
  const names = (at: string): string[] => {
    try {
      return fs.readdirSync(at);
    } catch {
      return [];
    }
  };
  for (let at = path.resolve(dir); ; at = path.dirname(at)) {
    const top = names(at);
    const found = top.find((name) => TOOL_CONFIG.test(name));
    if (found) return path.join(at, found);
    if (top.includes('.config')) {
      const inner = names(path.join(at, '.config')).find((name) => TOOL_CONFIG.test(name));
      if (inner) return path.join(at, '.config', inner);
    }
    if (top.includes('bin') && names(path.join(at, 'bin')).includes('hermit.hcl')) return path.join(at, 'bin', 'hermit.hcl');
    if (path.dirname(at) === at) return null;
  }
}

/** Runs `body` with a new private directory as its argument, and removes it after. */
async function inPrivateDir<T>(body: (dir: string) => Promise<T>): Promise<T> {
  const dir = makeScratchDir('gitleaksversion');
  try {
    return await body(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** `gitleaks version`'s answer, asked in `cwd`; a failure says only how it ended. */
function gitleaksVersion(binary: string, cwd: string): Promise<string> {
  return new Promise<string>((resolve, reject) =>
    execFile(binary, ['version'], { timeout: 30_000, cwd }, (error, stdout) => {
      if (!error) return resolve(stdout.trim());
      const { code, signal } = error as { code?: unknown; signal?: unknown };
      const how = typeof code === 'number' ? `exit ${code}` : typeof signal === 'string' ? `signal ${signal}` : typeof code === 'string' ? code : 'no answer';
      reject(new Error(`gitleaks version failed (${how})`));
    }),
  );
}
