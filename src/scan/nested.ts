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
const UNREAD_TAIL =
  'a tarball with a damaged region that no member header follows: vm-sync reads nothing in it, where a VM\'s GNU tar may still unpack something, so it may be only partly scanned; check it with `tar -tvf`, and deploy it repacked (tar -cf) or unpacked';
const SPARSE_PARTIAL = 'a sparse tar member vm-sync could not rebuild from its map: its stored bytes were searched, but an archive in it may be only partly scanned; deploy it as a regular file (tar without --sparse)';
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

/** How many blocks at the start of a file with no other format are searched for a tar header (GNU tar skips a damaged first block too). */
const TAR_PROBE_BLOCKS = 64;
/** The bytes at the end of a file that hold a zip's end record, if it has one (the record, and a comment of up to 64 KiB after it). */
const ZIP_TAIL = 22 + 65535;
/** Names whose bytes gitleaks opens as a tarball (not compressed: a compressed one has its compression's magic). */
const TAR_NAME = /\.tar$/i;
/** Names of a compressed tarball: the stream in it is read as a tar even when its first block is no header. */
const TAR_STREAM = /\.tar\.[^./]+$|\.t(gz|bz2?|xz|zst|lz4|br|sz|lz)$/i;

/** An archive's format, and whether its first bytes or its name say so (not only a header found further in). */
interface Format {
  kind: Magic;
  sure: boolean;
}

/**
 * The format of an archive (or a file that may be one): by its first bytes;
 * else a zip by an end record in its last 64 KiB (a self-extracting stub, or
 * any other prefix, before it: Go's archive/zip, and Info-ZIP unzip, read it
 * from that record); else a tar by its name (GNU tar skips a first block that
 * is no header: "This does not look like a tar archive"); else a tar by a
 * valid header in its first blocks (a size of whole blocks only: what tar
 * writes). null when it is none of them. `head` (the first
 * {@link TAR_PROBE_BLOCKS} blocks will do) and `tail` (the last
 * {@link ZIP_TAIL} bytes) may be parts of a file of `size` bytes.
 */
function formatOf(head: Buffer, name: string, tail = head, size = head.length): Format | null {
  const magic = magicOf(head);
  if (magic) return { kind: magic, sure: true };
  if (zipEnd(tail) >= 0) return { kind: 'zip', sure: true };
  // A `.tar.gz` that is no gzip stream: GNU tar goes by the bytes (no compression) where gitleaks goes by the name (and fails).
  if (TAR_NAME.test(name) || TAR_STREAM.test(name)) return { kind: 'tar', sure: true };
  if (size % 512 === 0 && tarProbe(head)) return { kind: 'tar', sure: false };
  return null;
}

/** Whether one of the first {@link TAR_PROBE_BLOCKS} blocks of `b` is a tar header. */
function tarProbe(b: Buffer): boolean {
  for (let off = 0; off + 512 <= b.length && off < TAR_PROBE_BLOCKS * 512; off += 512) if (headerOk(b.subarray(off, off + 512))) return true;
  return false;
}

const isSpace = (c: number): boolean => c === 32 || (c >= 9 && c <= 13);
const isOctal = (c: number): boolean => c >= 0x30 && c <= 0x37;
const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * A numeric header field, parsed as GNU tar's from_header() parses it (what
 * a VM's tar accepts): one leading NUL and any leading blanks skipped, octal
 * digits up to the first non-digit or the field's end (so a field full of
 * digits, with no terminator, is valid), which must be a NUL or a blank;
 * unless `octalOnly`, GNU's base-256 (first byte 0x80) and the old base-64
 * (`+`/`-`) too. null where GNU tar rejects it (blanks only, junk, a negative
 * number), or for a value past 2^53.
 */
export function fromHeader(f: Buffer, octalOnly: boolean): number | null {
  let i = f.length > 0 && f[0] === 0 ? 1 : 0;
  for (; ; i++) {
    if (i >= f.length) return null;
    if (!isSpace(f[i])) break;
  }
  let value = 0;
  if (isOctal(f[i])) {
    for (; i < f.length && isOctal(f[i]); i++) value = value * 8 + f[i] - 0x30;
  } else if (octalOnly) {
    // A checksum is octal only: whatever else stands here is checked as the terminator below.
  } else if (f[i] === 0x2b || f[i] === 0x2d) {
    const negative = f[i++] === 0x2d;
    for (let d: number; i < f.length && (d = BASE64.indexOf(String.fromCharCode(f[i]))) >= 0; i++) value = value * 64 + d;
    if (negative && value !== 0) return null;
  } else if (f[0] === 0x80) {
    for (i = 1; i < f.length; i++) value = value * 256 + f[i];
  } else if (f[0] === 0xff) {
    return null; // a negative base-256 number: no size or checksum
  }
  if (i < f.length && f[i] !== 0 && !isSpace(f[i])) return null;
  return Number.isSafeInteger(value) ? value : null;
}

/** What a 512-byte block is to GNU tar: all zeros (an end-of-archive block), a header (its checksum matches the unsigned or the signed sum), or neither. */
function blockKind(h: Buffer): 'zero' | 'header' | 'bad' {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < 512; i++) {
    const c = h[i];
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  if (unsigned === 0) return 'zero';
  // The checksum field counts as eight blanks.
  for (let i = 148; i < 156; i++) {
    unsigned += 32 - h[i];
    signed += 32 - (h[i] > 127 ? h[i] - 256 : h[i]);
  }
  const want = fromHeader(h.subarray(148, 156), true);
  return want !== null && (want === unsigned || want === signed) ? 'header' : 'bad';
}

/** Whether a 512-byte block is a tar header GNU tar accepts. */
function headerOk(h: Buffer): boolean {
  return blockKind(h) === 'header';
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

/** The records of a pax extended header (`<length> <key>=<value>\n`), in order; reading stops at the first malformed one, as GNU tar's does. */
function paxRecords(data: Buffer): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let at = 0; at < data.length; ) {
    const space = data.indexOf(0x20, at);
    const length = space > at ? Number(data.toString('latin1', at, space)) : NaN;
    if (!Number.isSafeInteger(length) || length <= space - at || at + length > data.length || data[at + length - 1] !== 0x0a) break;
    const record = data.toString('utf8', space + 1, at + length - 1);
    const eq = record.indexOf('=');
    if (eq < 0) break;
    out.push([record.slice(0, eq), record.slice(eq + 1)]);
    at += length;
  }
  return out;
}

/** Types whose data GNU tar never reads as a file's: hard and symbolic links, devices, directories, fifos. It reads the next header right after theirs, whatever their size field says (GNU tar 1.34 extracting). */
const NO_DATA = new Set(['1', '2', '3', '4', '5', '6']);
/** Types GNU tar skips by their size without unpacking a file: a volume label, a continued file, a dumpdir, pax and GNU long-name headers. */
const NOT_A_FILE = new Set(['V', 'M', 'D', 'g', 'x', 'L', 'K']);

/** What reading a tar found besides its members. */
interface TarNotes {
  /**
   * After a header, a block that is no header (nor an end block) before the
   * archive's end, and no header after it: something vm-sync cannot read. (A
   * file with no header at all is no tar to GNU tar either: its bytes are
   * scanned as text, as every archive's are.)
   */
  unreadTail: boolean;
  /** Members whose content could not be read whole (a sparse file whose map makes no sense), by name. */
  partial: string[];
}

/** A sparse file's bytes rebuilt from its stored segments and map; null when the map does not fit them (or it is too large to rebuild). */
function unsparse(stored: Buffer, map: ReadonlyArray<readonly [number, number]>, real: number): Buffer | null {
  if (!Number.isSafeInteger(real) || real > ENTRY_MAX) return null;
  const out = Buffer.alloc(real);
  let at = 0;
  for (const [offset, n] of map) {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(n) || offset < 0 || n < 0 || offset + n > real || at + n > stored.length) return null;
    stored.copy(out, offset, at, at + n);
    at += n;
  }
  return out;
}

/** An old GNU sparse map: four entries in the header at 386, each 12 octal digits of offset and 12 of length, an empty length ending it. */
function oldSparseEntries(block: Buffer, from: number, count: number, map: Array<[number, number]>): boolean {
  for (let i = 0; i < count; i++) {
    const at = from + i * 24;
    if (block[at + 12] === 0) return true;
    const offset = fromHeader(block.subarray(at, at + 12), false);
    const n = fromHeader(block.subarray(at + 12, at + 24), false);
    if (offset === null || n === null) return false;
    map.push([offset, n]);
  }
  return true;
}

/**
 * The regular members of a tar, the way GNU tar on a VM reads them: a block
 * that is not a valid header is skipped ("Skipping to next header") and the
 * next block tried, so every member after a damaged header is found too.
 * Every type GNU tar unpacks as a file is a member: regular, contiguous,
 * sparse (rebuilt from its map), and any type it does not know ("Unknown file
 * type, extracted as normal file"). pax `path=` and `size=` records, and GNU
 * long names, apply to the next header; links, devices, directories and fifos
 * carry no data (the next header follows theirs).
 */
function* tarMembers(b: Buffer, notes: TarNotes): Generator<{ name: string; data: Buffer }> {
  let long: Buffer | null = null;
  let pax: Array<[string, string]> = [];
  let zeros = 0;
  let ended = false;
  let unread = false;
  let seen = false;
  for (let off = 0; off + 512 <= b.length; ) {
    const h = b.subarray(off, off + 512);
    const kind = blockKind(h);
    const type = String.fromCharCode(h[156]);
    let size = kind === 'header' ? fromHeader(h.subarray(124, 136), false) : null;
    if (size === null) {
      // Two end blocks end the archive for GNU tar: nothing after them counts as damage (the walk still looks).
      if (kind === 'zero') ended ||= ++zeros >= 2;
      else {
        zeros = 0;
        unread ||= seen && !ended;
      }
      off += 512;
      continue;
    }
    zeros = 0;
    unread = false;
    seen = true;
    const record = (key: string): string | undefined => pax.findLast(([k]) => k === key)?.[1];
    const paxSize = record('size');
    // A pax size is the next file's (not another pax or long-name header's, which GNU tar reads by its own size).
    if (paxSize !== undefined && !'xgLK'.includes(type) && /^\d+$/.test(paxSize) && Number.isSafeInteger(Number(paxSize))) size = Number(paxSize);
    let start = off + 512;
    if (NO_DATA.has(type)) {
      off = start;
      long = null;
      pax = [];
      continue;
    }
    // An old GNU sparse header may be followed by extension blocks of its map, before the data.
    const map: Array<[number, number]> = [];
    let mapOk = true;
    if (type === 'S') {
      mapOk = oldSparseEntries(h, 386, 4, map);
      for (let more = h[482] !== 0; more && start + 512 <= b.length; start += 512) {
        const ext = b.subarray(start, start + 512);
        mapOk &&= oldSparseEntries(ext, 0, 21, map);
        more = ext[504] !== 0;
      }
    }
    const data = b.subarray(start, Math.min(b.length, start + size));
    off = start + Math.ceil(size / 512) * 512;
    if (type === 'L') {
      long = cstring(data);
      continue;
    }
    if (type === 'x') {
      pax = paxRecords(data);
      continue;
    }
    if (NOT_A_FILE.has(type)) {
      long = null;
      pax = [];
      continue;
    }
    const prefix = h.toString('latin1', 257, 263) === 'ustar\0' ? cstring(h.subarray(345, 500)) : Buffer.alloc(0);
    const own = cstring(h.subarray(0, 100));
    const name = record('GNU.sparse.name') ?? record('path') ?? (long ?? (prefix.length > 0 ? Buffer.concat([prefix, Buffer.from('/'), own]) : own)).toString('utf8');
    let content: Buffer | null = data;
    if (type === 'S') {
      const real = fromHeader(h.subarray(483, 495), false);
      content = mapOk && real !== null ? unsparse(data, map, real) : null;
    } else if (record('GNU.sparse.major') === '1') {
      // pax sparse 1.0: the map leads the data (decimal lines: a count, then offset and length pairs), padded to a block.
      const lines = data.toString('latin1', 0, Math.min(data.length, 64 * 1024)).split('\n');
      const count = Number(lines[0]);
      const numbers = lines.slice(1, 1 + 2 * count).map(Number);
      const mapBytes = lines.slice(0, 1 + 2 * count).join('\n').length + 1;
      for (let i = 0; i + 1 < numbers.length; i += 2) map.push([numbers[i], numbers[i + 1]]);
      const real = Number(record('GNU.sparse.realsize'));
      content = Number.isSafeInteger(count) && numbers.length === 2 * count && lines.length > 2 * count ? unsparse(data.subarray(Math.ceil(mapBytes / 512) * 512), map, real) : null;
    } else if (pax.some(([k]) => k.startsWith('GNU.sparse.'))) {
      // pax sparse 0.0 (offset and numbytes records) or 0.1 (one map record): the data is the segments, one after another.
      const numbers = record('GNU.sparse.map')?.split(',').map(Number) ?? pax.filter(([k]) => k === 'GNU.sparse.offset' || k === 'GNU.sparse.numbytes').map(([, v]) => Number(v));
      for (let i = 0; i + 1 < numbers.length; i += 2) map.push([numbers[i], numbers[i + 1]]);
      const real = Number(record('GNU.sparse.size') ?? record('GNU.sparse.realsize'));
      content = numbers.length % 2 === 0 ? unsparse(data, map, real) : null;
    }
    if (content === null) {
      // Its stored bytes are searched all the same; what they make up is not known.
      notes.partial.push(name);
      content = data;
    }
    yield { name, data: content };
    long = null;
    pax = [];
  }
  notes.unreadTail = unread;
}

/** One zip entry: its name, and how to have its bytes. */
interface ZipEntry {
  name: string;
  method: number;
  encrypted: boolean;
  data: Buffer;
  size: number;
}

/** A zip's end-of-central-directory signature. */
const ZIP_END = Buffer.from([0x50, 0x4b, 0x05, 0x06]);

/** Where the end record of a zip is in `b` (the last one, within the 64 KiB + 22 bytes at its end, where Go's archive/zip looks), or -1. */
function zipEnd(b: Buffer): number {
  const at = b.length >= 22 ? b.lastIndexOf(ZIP_END, b.length - 22) : -1;
  return at >= Math.max(0, b.length - ZIP_TAIL) ? at : -1;
}

/**
 * The file entries of a zip, from its central directory (what Go's
 * archive/zip, and so gitleaks, reads), or null when there is none to read.
 */
function zipEntries(b: Buffer): ZipEntry[] | null {
  let end = zipEnd(b);
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
 * (by their first bytes, a zip's end record, a tar header in the first
 * blocks, or by a name gitleaks opens), down to the depth
 * gitleaks opens archives ({@link MAX_ARCHIVE_DEPTH}), and extracts each to
 * `scratch` under a counter (no name from an archive ever becomes a path).
 * Tarballs are read the way GNU tar reads them (past damaged headers), zips by
 * their central directory, compressed streams with the tool a VM uses.
 *
 * Whatever could not be searched is returned as unscanned with the reason:
 * 7z and rar archives (gitleaks opens them; vm-sync cannot), tarballs in a
 * compression vm-sync has no tool for, encrypted or oddly compressed zip
 * entries, sparse tar members whose map does not fit, tars with a damaged
 * region that no header follows, and anything past the size limits.
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
    const format = formatOf(bytes, name);
    if (!format && !(depth > 0 && ARCHIVE_NAME.test(name))) return;
    if (depth > 0) {
      // gitleaks opens an archive at depth d only while d < MAX_ARCHIVE_DEPTH (and reports the deeper ones itself).
      if (depth >= MAX_ARCHIVE_DEPTH) return;
      if (written + bytes.length > TOTAL_MAX) return void unscanned.push({ path: at, reason: 'too_large', transient: true, detail: `an archive inside an archive, not extracted to be scanned whole: the scan's ${TOTAL_MAX / 1024 / 1024} MB for those is used up` });
      const file = path.join(scratch, String(archives.length));
      fs.writeFileSync(file, bytes, { mode: 0o600 });
      written += bytes.length;
      archives.push({ path: at, file, magic: magicOf(bytes) });
    }
    if (format) await search(bytes, format, at, depth, name);
  };

  /** The entries of an archive at `at` (depth: how many archives hold it; name: its base name). */
  const search = async (bytes: Buffer, format: Format, at: string, depth: number, name: string): Promise<void> => {
    const magic = format.kind;
    switch (magic) {
      case '7z':
        return report(at, 'archive', CANNOT_LOOK('7z'));
      case 'rar':
        return report(at, 'archive', CANNOT_LOOK('rar'));
      case 'tar': {
        const notes: TarNotes = { unreadTail: false, partial: [] };
        let n = 0;
        for (const member of tarMembers(bytes, notes)) {
          if (++n > MAX_ENTRIES) return report(at, 'archive', `more than ${MAX_ENTRIES} entries: the rest is not searched for archives inside it`);
          await entry(member.data, at, member.name, depth);
        }
        for (const member of notes.partial) report(`${at}!${cleanName(member)}`, 'archive', SPARSE_PARTIAL);
        // Only for what says it is a tar: a file that merely has a header somewhere in its first blocks may be anything.
        if (notes.unreadTail && format.sure) report(at, 'archive', UNREAD_TAIL);
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
            // Only what it starts with decides whether it is read whole (the first blocks, where its size may be a tar's).
            const head = await inflateHead(e.data, e.size % 512 === 0 ? TAR_PROBE_BLOCKS * 512 : 512);
            const base = path.posix.basename(e.name);
            if (!magicOf(head) && !(e.size % 512 === 0 && tarProbe(head)) && !ARCHIVE_NAME.test(base) && !OTHER_COMPRESSED_TAR.test(base)) continue;
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
        // A compressed tarball's stream is read as a tar whatever its first block is (GNU tar skips a damaged one).
        const innerName = TAR_STREAM.test(name) ? 'stream.tar' : name.replace(/\.[^./]*$/, '');
        const inner = inflated.bytes ? formatOf(inflated.bytes, innerName) : null;
        // A stream in a stream (`x.gz.gz`) is searched one level deeper, so that depth bounds it.
        if (inflated.bytes && inner) await search(inflated.bytes, inner, at, depth + (inner.kind === 'tar' || inner.kind === 'zip' ? 0 : 1), innerName);
        return;
      }
      default:
    }
  };

  const entry = (bytes: Buffer, at: string, name: string, depth: number): Promise<void> => visit(bytes, `${at}!${cleanName(name)}`, path.posix.basename(name), depth + 1);

  for (const { shown, file } of files) {
    let head: Buffer;
    let tail: Buffer;
    let size: number;
    try {
      const fd = fs.openSync(file, 'r');
      try {
        size = fs.fstatSync(fd).size;
        // Its first bytes (the first blocks when its size is a tar's) and its last 64 KiB (a zip's end record); a small file in one read.
        const read = (at: number, length: number): Buffer => {
          const b = Buffer.allocUnsafe(length);
          return b.subarray(0, fs.readSync(fd, b, 0, length, at));
        };
        const want = Math.min(size, size % 512 === 0 ? TAR_PROBE_BLOCKS * 512 : 512);
        tail = read(Math.max(0, size - ZIP_TAIL), Math.min(size, ZIP_TAIL));
        head = size <= ZIP_TAIL ? tail.subarray(0, want) : read(0, want);
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      continue; // gone or unreadable: the scan itself reports what it cannot read
    }
    const name = path.posix.basename(shown);
    if (OTHER_COMPRESSED_TAR.test(name)) report(shown, 'archive', OTHER_COMPRESSION);
    const format = formatOf(head, name, tail, size);
    if (!format) continue;
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
    await search(bytes, format, shown, 0, name);
  }
  return { archives, unscanned };
}
