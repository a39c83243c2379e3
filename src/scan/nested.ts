import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import type { UnscannedFile } from './coverage.js';
import { MAX_ARCHIVE_DEPTH } from './gitleaks.js';
import { inflate, type Compression } from './inflate.js';

/*
 * Why vm-sync opens archives inside archives itself: gitleaks opens an entry
 * of an archive as an archive in its turn (a `bundle.tar.zst` in a zip, a
 * `.tar.gz` in a tar ...), and reads every tarball through Go's archive/tar,
 * which stops at the first member header it rejects and says nothing. GNU tar
 * on a VM skips that header and unpacks the members after it. For a file of
 * the tree itself, coverage.ts scans a tarball's bytes, inflated, as text;
 * this module finds the archives and compressed streams *inside* archives, to
 * the depth gitleaks opens, and extracts each one to a private file, so that
 * coverage.ts gives it the same treatment.
 */

/** What the first bytes of a file or entry say it is. */
export type Magic = 'zip' | 'tar' | Compression | '7z' | 'rar';

/** An archive (or compressed stream) found inside an archive, extracted to a private file. */
export interface NestedArchive {
  /** `file!entry[!entry...]`, the way gitleaks names it (an entry name cleaned like Go's filepath.Clean). */
  path: string;
  /** Where its bytes are: a file in the scratch directory, named by a counter (never by the entry's name). */
  file: string;
  /** Its format by its first bytes; null when only its name says it is one. */
  magic: Magic | null;
}

/** The nested archives of a tree, and what could not be searched for them (with the reason). */
export interface NestedScan {
  archives: NestedArchive[];
  unscanned: UnscannedFile[];
}

/** The largest archive of the tree searched for archives inside it; a larger one is reported. */
export const WALK_MAX = 256 * 1024 * 1024;
/** The largest entry extracted (the inflate rescan's own limit: the same stream is read no further than that). */
export const ENTRY_MAX = 64 * 1024 * 1024;
/** All extracted bytes of one scan together; past it, what is left is reported. */
export const TOTAL_MAX = 1024 * 1024 * 1024;
/** The most entries read from one archive (a zip of a million empty entries is read in no time, but listed forever). */
const MAX_ENTRIES = 200_000;

const CANNOT_LOOK = (format: string): string =>
  `a ${format} archive: gitleaks opens it, but vm-sync cannot look inside it for tarballs that gitleaks stops reading at a damaged member header, so it may be only partly scanned; deploy its content unpacked, or as zip or tar`;
const OTHER_COMPRESSION = 'a tarball in a compression vm-sync cannot inflate (brotli, lz4, snappy, lzip, minlz, zlib): gitleaks stops reading it at a damaged member header, so it may be only partly scanned; deploy it as .tar.gz, .tar.zst, .tar.xz or .tar.bz2';

/**
 * Names gitleaks (mholt/archives, by name alone) opens as a tarball in a
 * compression vm-sync has no tool for. Such a tarball's stream cannot be
 * read here, so it is reported: it is never a silent pass.
 */
const OTHER_COMPRESSED_TAR = /\.tar\.(br|lz4|sz|lz|mlz|zz)$|\.t(br|lz4|sz|lz)$/i;
/** Names gitleaks opens as an archive or a compressed stream (coverage.ts' list, and `.tar` anywhere in the name, as mholt/archives matches it). */
const ARCHIVE_NAME = /\.(zip|jar|war|ear|apk|aar|whl|nupkg|tar|tgz|gz|tbz2?|bz2|txz|xz|tzst|zst|7z|rar)$|\.tar\./i;

/** The format of `b` by its first bytes, or null. */
export function magicOf(b: Buffer): Magic | null {
  const starts = (...bytes: number[]): boolean => b.length >= bytes.length && bytes.every((v, i) => b[i] === v);
  if (starts(0x50, 0x4b, 0x03, 0x04) || starts(0x50, 0x4b, 0x05, 0x06)) return 'zip';
  if (starts(0x1f, 0x8b)) return 'gz';
  if (starts(0x42, 0x5a, 0x68)) return 'bz2';
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return 'zst';
  if (starts(0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c)) return '7z';
  if (starts(0x52, 0x61, 0x72, 0x21, 0x1a, 0x07)) return 'rar';
  // ustar's magic, or (an old tar has none) a first header with a valid checksum.
  if (b.length >= 512 && (b.toString('latin1', 257, 262) === 'ustar' || headerOk(b.subarray(0, 512)))) return 'tar';
  return null;
}

/** Whether a 512-byte block is a tar header GNU tar accepts: its checksum (unsigned or signed sum) matches. */
function headerOk(h: Buffer): boolean {
  const field = h.toString('latin1', 148, 156).replace(/[\0 ]+$/, '').trim();
  if (!/^[0-7]{1,7}$/.test(field)) return false;
  const want = parseInt(field, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < 512; i++) {
    const c = i >= 148 && i < 156 ? 32 : h[i];
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return want === unsigned || want === signed;
}

/** A tar size field: octal, or GNU's base-256 (top bit set); null when it is neither. */
function tarSize(h: Buffer): number | null {
  if (h[124] & 0x80) {
    let n = 0;
    for (let i = 125; i < 136; i++) n = n * 256 + h[i];
    return Number.isSafeInteger(n) ? n : null;
  }
  const field = h.toString('latin1', 124, 136).replace(/[\0 ]+$/, '').trim();
  return field === '' ? 0 : /^[0-7]+$/.test(field) ? parseInt(field, 8) : null;
}

/** A NUL-terminated field. */
function cstring(b: Buffer): Buffer {
  const end = b.indexOf(0);
  return end < 0 ? b : b.subarray(0, end);
}

/** An entry name as gitleaks shows it: Go's filepath.Clean of the name (a leading `/` kept, `./`, `//` and `x/..` folded). */
export function cleanName(name: string): string {
  if (name === '') return '.';
  const normal = path.posix.normalize(name);
  return normal.length > 1 && normal.endsWith('/') ? normal.slice(0, -1) : normal;
}

/**
 * The regular members of a tar, the way GNU tar on a VM reads them: a block
 * that is not a valid header is skipped ("Skipping to next header") and the
 * next block tried, so every member after a damaged header is found too.
 */
function* tarMembers(b: Buffer): Generator<{ name: string; data: Buffer }> {
  let long: Buffer | null = null;
  let pax: string | null = null;
  for (let off = 0; off + 512 <= b.length; ) {
    const h = b.subarray(off, off + 512);
    const size = headerOk(h) ? tarSize(h) : null;
    if (size === null) {
      off += 512;
      continue;
    }
    const start = off + 512;
    const data = b.subarray(start, Math.min(b.length, start + size));
    off = start + Math.ceil(size / 512) * 512;
    const type = String.fromCharCode(h[156]);
    if (type === 'L') {
      long = cstring(data);
      continue;
    }
    if (type === 'x') {
      // A pax header's `path=` record names the next member.
      const record = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
      pax = record ? record[1] : pax;
      continue;
    }
    if (type === '0' || type === '\0' || type === '7') {
      const prefix = h.toString('latin1', 257, 263) === 'ustar\0' ? cstring(h.subarray(345, 500)) : Buffer.alloc(0);
      const own = cstring(h.subarray(0, 100));
      const name = pax ?? (long ?? (prefix.length > 0 ? Buffer.concat([prefix, Buffer.from('/'), own]) : own)).toString('utf8');
      yield { name, data };
    }
    long = null;
    pax = null;
  }
}

/** One zip entry: its name, and how to have its bytes. */
interface ZipEntry {
  name: string;
  method: number;
  encrypted: boolean;
  data: Buffer;
  size: number;
}

/**
 * The file entries of a zip, from its central directory (what Go's
 * archive/zip, and so gitleaks, reads), or null when there is none to read.
 */
function zipEntries(b: Buffer): ZipEntry[] | null {
  const from = Math.max(0, b.length - 22 - 65535);
  let end = -1;
  for (let i = b.length - 22; i >= from; i--) {
    if (b.readUInt32LE(i) === 0x06054b50) {
      end = i;
      break;
    }
  }
  if (end < 0) return null;
  let count = b.readUInt16LE(end + 10);
  let size = b.readUInt32LE(end + 12);
  let offset = b.readUInt32LE(end + 16);
  // zip64: the real values are in the zip64 end record its locator points to.
  if ((count === 0xffff || size === 0xffffffff || offset === 0xffffffff) && end >= 20 && b.readUInt32LE(end - 20) === 0x07064b50) {
    const at = Number(b.readBigUInt64LE(end - 20 + 8));
    if (at + 56 > b.length || b.readUInt32LE(at) !== 0x06064b50) return null;
    count = Number(b.readBigUInt64LE(at + 32));
    size = Number(b.readBigUInt64LE(at + 40));
    offset = Number(b.readBigUInt64LE(at + 48));
    end = at;
  }
  // Bytes before the archive (a self-extracting stub) shift every offset, as Go's reader allows.
  const base = Math.max(0, end - size - offset);
  const out: ZipEntry[] = [];
  for (let p = base + offset, i = 0; i < count && i < MAX_ENTRIES; i++) {
    if (p + 46 > b.length || b.readUInt32LE(p) !== 0x02014b50) break;
    const flags = b.readUInt16LE(p + 8);
    const method = b.readUInt16LE(p + 10);
    let compressed = b.readUInt32LE(p + 20);
    let plain = b.readUInt32LE(p + 24);
    const nameLength = b.readUInt16LE(p + 28);
    const extraLength = b.readUInt16LE(p + 30);
    const commentLength = b.readUInt16LE(p + 32);
    let local = b.readUInt32LE(p + 42);
    const name = b.subarray(p + 46, p + 46 + nameLength).toString('utf8');
    // zip64 sizes and offset, in that order, each only where the 32-bit field is full.
    const extra = b.subarray(p + 46 + nameLength, p + 46 + nameLength + extraLength);
    for (let e = 0; e + 4 <= extra.length; ) {
      const id = extra.readUInt16LE(e);
      const length = extra.readUInt16LE(e + 2);
      if (id === 0x0001) {
        let q = e + 4;
        const next = (): number => {
          const v = q + 8 <= e + 4 + length && q + 8 <= extra.length ? Number(extra.readBigUInt64LE(q)) : -1;
          q += 8;
          return v;
        };
        if (plain === 0xffffffff) plain = next();
        if (compressed === 0xffffffff) compressed = next();
        if (local === 0xffffffff) local = next();
      }
      e += 4 + length;
    }
    p += 46 + nameLength + extraLength + commentLength;
    if (name.endsWith('/')) continue;
    const at = base + local;
    if (local < 0 || compressed < 0 || at + 30 > b.length || b.readUInt32LE(at) !== 0x04034b50) continue;
    const start = at + 30 + b.readUInt16LE(at + 26) + b.readUInt16LE(at + 28);
    out.push({ name, method, encrypted: (flags & 1) !== 0, data: b.subarray(start, Math.min(b.length, start + compressed)), size: plain });
  }
  return out;
}

/** Up to `want` bytes from the start of a raw deflate stream, inflating no more than that (a zip bomb costs nothing). */
function inflateHead(data: Buffer, want: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const z = zlib.createInflateRaw();
    const chunks: Buffer[] = [];
    let got = 0;
    const done = (): void => {
      z.destroy();
      resolve(Buffer.concat(chunks).subarray(0, want));
    };
    z.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= want) done();
    });
    z.on('error', done);
    z.on('end', done);
    z.end(data);
  });
}

/** Zip compression methods whose stream is that compression's own file format. */
const ZIP_TOOL: Record<number, Compression> = { 12: 'bz2', 93: 'zst', 95: 'xz' };

/**
 * Finds the archives and compressed streams inside the archives of `files`
 * (by their first bytes, or by a name gitleaks opens), down to the depth
 * gitleaks opens archives ({@link MAX_ARCHIVE_DEPTH}), and extracts each to
 * `scratch` under a counter (no name from an archive ever becomes a path).
 * Tarballs are read the way GNU tar reads them (past damaged headers), zips by
 * their central directory, compressed streams with the tool a VM uses.
 *
 * Whatever could not be searched is returned as unscanned with the reason:
 * 7z and rar archives (gitleaks opens them; vm-sync cannot), tarballs in a
 * compression vm-sync has no tool for, encrypted or oddly compressed zip
 * entries, and anything past the size limits.
 */
export async function findNestedArchives(files: ReadonlyArray<{ shown: string; file: fs.PathLike }>, scratch: string, signal?: AbortSignal): Promise<NestedScan> {
  const archives: NestedArchive[] = [];
  const unscanned: UnscannedFile[] = [];
  let written = 0;
  const report = (at: string, reason: UnscannedFile['reason'], detail: string): void => void unscanned.push({ path: at, reason, detail });

  /** An entry's bytes (or a whole file's): searched when it is an archive, recorded when it is a nested one. */
  const visit = async (bytes: Buffer, at: string, name: string, depth: number): Promise<void> => {
    signal?.throwIfAborted();
    if (OTHER_COMPRESSED_TAR.test(name)) report(at, 'archive', OTHER_COMPRESSION);
    const magic = magicOf(bytes);
    if (!magic && !(depth > 0 && ARCHIVE_NAME.test(name))) return;
    if (depth > 0) {
      // gitleaks opens an archive at depth d only while d < MAX_ARCHIVE_DEPTH (and reports the deeper ones itself).
      if (depth >= MAX_ARCHIVE_DEPTH) return;
      if (written + bytes.length > TOTAL_MAX) return report(at, 'too_large', `an archive inside an archive, not extracted to be scanned whole: the scan's ${TOTAL_MAX / 1024 / 1024} MB for those is used up`);
      const file = path.join(scratch, String(archives.length));
      fs.writeFileSync(file, bytes, { mode: 0o600 });
      written += bytes.length;
      archives.push({ path: at, file, magic });
    }
    await search(bytes, magic, at, depth);
  };

  /** The entries of an archive at `at` (depth: how many archives hold it). */
  const search = async (bytes: Buffer, magic: Magic | null, at: string, depth: number): Promise<void> => {
    switch (magic) {
      case '7z':
        return report(at, 'archive', CANNOT_LOOK('7z'));
      case 'rar':
        return report(at, 'archive', CANNOT_LOOK('rar'));
      case 'tar': {
        let n = 0;
        for (const member of tarMembers(bytes)) {
          if (++n > MAX_ENTRIES) return report(at, 'archive', `more than ${MAX_ENTRIES} entries: the rest is not searched for archives inside it`);
          await entry(member.data, at, member.name, depth);
        }
        return;
      }
      case 'zip': {
        const entries = zipEntries(bytes);
        if (entries && entries.length >= MAX_ENTRIES) report(at, 'archive', `more than ${MAX_ENTRIES} entries: the rest is not searched for archives inside it`);
        for (const e of entries ?? []) {
          const inner = `${at}!${cleanName(e.name)}`;
          if (e.encrypted) {
            report(inner, 'archive', 'an encrypted zip entry: nothing in it can be scanned');
            continue;
          }
          if (e.method === 0) await entry(e.data, at, e.name, depth);
          else if (e.method === 8) {
            // Only what it starts with decides whether it is read whole.
            const head = await inflateHead(e.data, 512);
            const base = path.posix.basename(e.name);
            if (!magicOf(head) && !ARCHIVE_NAME.test(base) && !OTHER_COMPRESSED_TAR.test(base)) continue;
            if (e.size > ENTRY_MAX) {
              report(inner, 'too_large', `an archive inside an archive larger than ${ENTRY_MAX / 1024 / 1024} MB: only scanned as far as gitleaks reads it`);
              continue;
            }
            let whole: Buffer;
            try {
              whole = zlib.inflateRawSync(e.data, { maxOutputLength: ENTRY_MAX });
            } catch (error) {
              report(inner, (error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' ? 'too_large' : 'archive', 'a zip entry vm-sync could not inflate whole: an archive in it may be only partly scanned');
              continue;
            }
            await entry(whole, at, e.name, depth);
          } else if (ZIP_TOOL[e.method]) {
            const inflated = await inflate(ZIP_TOOL[e.method], e.data, ENTRY_MAX, { signal, cwd: scratch });
            if (inflated.problem) report(inner, inflated.problem.reason, inflated.problem.detail);
            if (inflated.bytes) await entry(inflated.bytes, at, e.name, depth);
          } else {
            report(inner, 'archive', `a zip entry compressed with method ${e.method}, which vm-sync cannot read: an archive in it may be only partly scanned`);
          }
        }
        return;
      }
      case 'gz':
      case 'zst':
      case 'xz':
      case 'bz2': {
        // A compressed stream is no archive level of its own in gitleaks' names (`x.tar.gz!member`).
        const inflated = await inflate(magic, bytes, ENTRY_MAX, { signal, cwd: scratch });
        // A file of the tree itself: coverage.ts' inflate rescan reports the same problem.
        if (inflated.problem && depth > 0) report(at, inflated.problem.reason, inflated.problem.detail);
        const inner = inflated.bytes ? magicOf(inflated.bytes) : null;
        // A stream in a stream (`x.gz.gz`) is searched one level deeper, so that depth bounds it.
        if (inflated.bytes && inner) await search(inflated.bytes, inner, at, depth + (inner === 'tar' || inner === 'zip' ? 0 : 1));
        return;
      }
      default:
    }
  };

  const entry = (bytes: Buffer, at: string, name: string, depth: number): Promise<void> => visit(bytes, `${at}!${cleanName(name)}`, path.posix.basename(name), depth + 1);

  for (const { shown, file } of files) {
    const head = Buffer.alloc(512);
    let n: number;
    let size: number;
    try {
      const fd = fs.openSync(file, 'r');
      try {
        size = fs.fstatSync(fd).size;
        n = fs.readSync(fd, head, 0, head.length, 0);
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      continue; // gone or unreadable: the scan itself reports what it cannot read
    }
    const name = path.posix.basename(shown);
    if (OTHER_COMPRESSED_TAR.test(name)) report(shown, 'archive', OTHER_COMPRESSION);
    const magic = magicOf(head.subarray(0, n));
    if (!magic) continue;
    if (size > WALK_MAX) {
      report(shown, 'too_large', `an archive larger than ${WALK_MAX / 1024 / 1024} MB is not searched for archives inside it (gitleaks stops reading a tarball in it at a damaged member header)`);
      continue;
    }
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch {
      continue;
    }
    await search(bytes, magic, shown, 0);
  }
  return { archives, unscanned };
}
