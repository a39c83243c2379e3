import { invocation } from '../advice.js';
import zlib from 'node:zlib';
import { FAILURE_CODES, type FailureCode, VmSyncError } from '../errors.js';
import { parseAgentOutput } from './agent-script.js';
import type { RawExecResult } from './session.js';
import { vmText } from './untrusted.js';

/*
 * The answer of agent.sh `listing` (what a release holds, for
 * `verify --deep`). Paths and link targets are latin1 strings: one char per
 * byte, so a name that is not UTF-8, or holds a newline, survives byte for
 * byte. Every field is required and checked: a listing that is cut short,
 * garbled or forged is an error, never an empty (drift-free) tree.
 */

/** What an entry is; `other` is a socket or a door, `device` a block or character device. */
export type EntryType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'device' | 'other';

/** One entry of a tree, as the VM lists it or as the export gives it. */
export interface TreeEntry {
  type: EntryType;
  /** Permission bits (with setuid, setgid, sticky); null: not compared (a directory vm-sync creates). */
  mode: number | null;
  /** Regular files only: size in bytes. */
  size: number | null;
  /** Symlinks only: the target, latin1, never followed. */
  target: string | null;
  /** Regular files only: hex sha256 of the content. */
  sha256: string | null;
}

/** Paths (latin1, `/`-separated, relative to the tree's root) to their entries. */
export type TreeListing = Map<string, TreeEntry>;

/** Bounds on one listing read: every VM-side number the runner trusts is capped here. */
export interface ListingLimits {
  /** Entries the VM may list (it refuses more before hashing anything). */
  maxEntries: number;
  /** Bytes of gzip'd listing read off the channel. */
  maxCompressedBytes: number;
  /** Bytes the listing may decompress to (a gzip bomb stops here). */
  maxBytes: number;
}

/** The defaults: a few hundred thousand entries, at most a few hundred MiB of runner memory per VM. */
export const LISTING_LIMITS: ListingLimits = { maxEntries: 300_000, maxCompressedBytes: 64 * 1024 * 1024, maxBytes: 160 * 1024 * 1024 };

const TYPES: Record<string, EntryType> = { f: 'file', d: 'dir', l: 'symlink', p: 'fifo', s: 'socket', b: 'device', c: 'device', D: 'other' };
const HEADER = 'vm-sync-listing-1';
const HASHES = 'hashes';
const META = /^([fdlpsbcD]) ([0-7]{1,5}) ([0-9]{1,20})$/;
const HASH_RECORD = /^([0-9a-f]{64}) [ *]\.\/([\s\S]+)$/;
const END = /^end ([0-9]{1,3}) ([0-9]{1,3})$/;
const AGENT_CODES: ReadonlySet<string> = new Set(FAILURE_CODES);

/** A byte bound in words: MiB when it is that large. */
const bytes = (n: number): string => (n >= 1048576 ? `${Math.round(n / 1048576)} MiB` : `${n} bytes`);

function tooMany(vmId: string, limits: ListingLimits, what: string): VmSyncError {
  return new VmSyncError(
    'remote_command_failed',
    `too many entries on ${vmId} for the deep verify: ${what} (the limit is ${limits.maxEntries} entries, ${bytes(limits.maxCompressedBytes)} gzip'd, ${bytes(limits.maxBytes)} listed). Exclude generated trees with rsync_excludes or shared_paths, or check this VM with ${invocation('verify', [['vm', vmId]])} (without deep).`,
  );
}

function garbled(vmId: string, why: string): VmSyncError {
  return new VmSyncError('remote_command_failed', `the listing from ${vmId} is not usable (${why}): nothing was compared. Run ${invocation('verify', [['deep'], ['vm', vmId]])} again; if it persists, check the VM's find, sha256sum and gzip.`);
}

/** Whether a relative path is one find could print: no empty, `.` or `..` component, not absolute. */
function plainPath(rel: string): boolean {
  return rel !== '' && !rel.startsWith('/') && rel.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
}

/**
 * Parses the decompressed listing (see agent.sh `listing`). Requires the
 * header, three fields per entry, a hash for every regular file and nothing
 * else, and the end record with both of the VM's statuses 0.
 */
export function parseListing(data: Buffer, vmId: string, limits: ListingLimits = LISTING_LIMITS): TreeListing {
  let at = 0;
  const next = (): string | null => {
    if (at >= data.length) return null;
    const nul = data.indexOf(0, at);
    if (nul < 0) throw garbled(vmId, 'a field without its NUL terminator: the listing was cut short');
    const field = data.toString('latin1', at, nul);
    at = nul + 1;
    return field;
  };
  if (next() !== HEADER) throw garbled(vmId, 'no listing header');
  const entries: TreeListing = new Map();
  for (;;) {
    const meta = next();
    if (meta === null) throw garbled(vmId, 'it ends before the hashes: the listing was cut short');
    if (meta === HASHES) break;
    const m = META.exec(meta);
    if (!m) throw garbled(vmId, `an entry of unknown form ${JSON.stringify(vmText(meta, 40))}`);
    const rel = next();
    const link = next();
    if (rel === null || link === null) throw garbled(vmId, 'an entry without its path or link field: the listing was cut short');
    if (!plainPath(rel)) throw garbled(vmId, `an entry with the path ${JSON.stringify(vmText(rel, 80))}`);
    if (entries.has(rel)) throw garbled(vmId, `${JSON.stringify(vmText(rel, 80))} is listed twice`);
    const type = TYPES[m[1]];
    if ((type === 'symlink') !== (link !== '')) throw garbled(vmId, `${JSON.stringify(vmText(rel, 80))}: a link target on a ${type}, or a symlink without one`);
    const size = Number(m[3]);
    if (!Number.isSafeInteger(size)) throw garbled(vmId, `an entry size of ${m[3]}`);
    // A symlink's own mode means nothing on Linux: only its target is compared.
    entries.set(rel, { type, mode: type === 'symlink' ? null : parseInt(m[2], 8), size: type === 'file' ? size : null, target: type === 'symlink' ? link : null, sha256: null });
    if (entries.size > limits.maxEntries) throw tooMany(vmId, limits, `it listed more than ${limits.maxEntries}`);
  }
  for (;;) {
    const record = next();
    if (record === null) throw garbled(vmId, 'no end record: the listing was cut short');
    const end = END.exec(record);
    if (end) {
      if (at !== data.length) throw garbled(vmId, 'data after the end record');
      if (end[1] !== '0') throw new VmSyncError('remote_command_failed', `find could not read all of the release on ${vmId} (exit ${end[1]}): an unreadable directory hides what it holds. Fix its permissions on the VM, then run ${invocation('verify', [['deep'], ['vm', vmId]])} again.`);
      if (end[2] !== '0') throw new VmSyncError('remote_command_failed', `sha256sum could not read every file of the release on ${vmId} (exit ${end[2]}): an unreadable file cannot be compared. Fix its permissions on the VM, then run ${invocation('verify', [['deep'], ['vm', vmId]])} again.`);
      break;
    }
    const h = HASH_RECORD.exec(record);
    if (!h) throw garbled(vmId, `a hash record of unknown form ${JSON.stringify(vmText(record, 80))}`);
    const entry = entries.get(h[2]);
    if (!entry || entry.type !== 'file') throw garbled(vmId, `a hash for ${JSON.stringify(vmText(h[2], 80))}, which is not a listed regular file`);
    if (entry.sha256 !== null) throw garbled(vmId, `two hashes for ${JSON.stringify(vmText(h[2], 80))}`);
    entry.sha256 = h[1];
  }
  for (const [rel, entry] of entries) {
    if (entry.type === 'file' && entry.sha256 === null) throw garbled(vmId, `no hash for the file ${JSON.stringify(vmText(rel, 80))} (it changed while it was read?)`);
  }
  return entries;
}

/**
 * Reads what `listing` sent over its raw channel: an agent error (framed
 * lines, before anything else), or the line `@NONCE listing=gzip`, the gzip'd
 * listing, and `@NONCE end=ok`. Anything else (cut, over a bound, no end
 * marker) is an error that says so.
 */
export function readListingAnswer(result: RawExecResult, nonce: string, vmId: string, limits: ListingLimits = LISTING_LIMITS): TreeListing {
  if (result.overflowed) throw tooMany(vmId, limits, `its listing is over ${bytes(limits.maxCompressedBytes)} gzip'd`);
  const header = Buffer.from(`@${nonce} listing=gzip\n`, 'latin1');
  const start = result.stdout.indexOf(header);
  if (start < 0) {
    // Only framed lines before the header count: anything else is a chatty login shell.
    const said = parseAgentOutput(result.stdout.toString('utf8'), nonce);
    const code = said.get('error');
    const message = vmText(said.get('message') ?? '', 500);
    if (code === 'too_many') throw tooMany(vmId, limits, message);
    const known = code !== null && code !== 'failed' && AGENT_CODES.has(code) ? (code as FailureCode) : 'remote_command_failed';
    const detail = message || vmText(result.stderr.trim().split('\n').slice(-3).join(' | '), 500) || `exit ${result.code}, no answer`;
    throw new VmSyncError(known, `listing on ${vmId} failed: ${detail}`);
  }
  const trailer = Buffer.from(`@${nonce} end=ok\n`, 'latin1');
  const body = result.stdout.subarray(start + header.length);
  if (result.code !== 0 || body.length < trailer.length || !body.subarray(body.length - trailer.length).equals(trailer)) {
    const said = vmText(result.stderr.trim().split('\n').slice(-2).join(' | '), 300);
    throw garbled(vmId, `it did not run to its end: exit ${result.code}${said ? `, ${said}` : ''}`);
  }
  let data: Buffer;
  try {
    data = zlib.gunzipSync(body.subarray(0, body.length - trailer.length), { maxOutputLength: limits.maxBytes });
  } catch (error) {
    if (error instanceof RangeError || (error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw tooMany(vmId, limits, `its listing is over ${bytes(limits.maxBytes)}`);
    throw garbled(vmId, `its gzip data is corrupt: ${vmText((error as Error).message, 100)}`);
  }
  return parseListing(data, vmId, limits);
}
