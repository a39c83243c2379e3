import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { plantedSecrets, secretFragments } from '../helpers/secrets.js';
import type { World, CliRun } from '../helpers/world.js';
import { renderSummary } from '../../src/report/summary.js';

export const secrets = plantedSecrets();
export const fragments = secretFragments(secrets);
export const token = secrets.github;
export const line = `api_token = "${token}"\n`;

export function leaked(...texts: string[]): string | null {
  const all = texts.join('\n');
  for (const f of fragments) if (all.includes(f)) return f;
  return null;
}

export function outputs(run: CliRun): string[] {
  return [run.stdout, run.stderr, run.json?.scan ? renderSummary(run.json, { runUrl: '', failure: null }) : ''];
}

export const head = (world: World): string => world.ws.git(world.ws.work, ['rev-parse', 'HEAD']);

/** Commits files (names may be raw byte Buffers) and pushes. */
export function commitPush(world: World, files: Array<[string | Buffer, string | Buffer | null]>, message: string, opts: { author?: string } = {}): string {
  for (const [name, content] of files) {
    const full = Buffer.concat([Buffer.from(`${world.ws.work}/`), Buffer.isBuffer(name) ? name : Buffer.from(name)]);
    fs.rmSync(full, { force: true, recursive: true });
    if (content === null) continue;
    const dir = full.subarray(0, full.lastIndexOf(0x2f));
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(full, content);
  }
  execFileSync('git', ['-C', world.ws.work, 'add', '--all', '--force']);
  const env = { ...process.env, ...(opts.author ? { GIT_AUTHOR_NAME: opts.author, GIT_COMMITTER_NAME: opts.author } : {}) };
  execFileSync('git', ['-C', world.ws.work, 'commit', '--quiet', '--allow-empty', '-m', message], { env });
  world.ws.push();
  return head(world);
}

export function rewind(world: World, base: string): void {
  world.ws.git(world.ws.work, ['reset', '--quiet', '--hard', base]);
  world.ws.push(true);
}

/** A zip (stored entries). */
export function zipOf(entries: Record<string, string | Buffer>): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, content] of Object.entries(entries)) {
    const data = Buffer.from(content);
    const nameBytes = Buffer.from(name);
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x21, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    parts.push(local, nameBytes, data);
    const entry = Buffer.alloc(46);
    entry.writeUInt32LE(0x02014b50, 0);
    entry.writeUInt16LE(20, 4);
    entry.writeUInt16LE(20, 6);
    entry.writeUInt16LE(0x21, 14);
    entry.writeUInt32LE(crc, 16);
    entry.writeUInt32LE(data.length, 20);
    entry.writeUInt32LE(data.length, 24);
    entry.writeUInt16LE(nameBytes.length, 28);
    entry.writeUInt32LE(offset, 42);
    central.push(entry, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const directory = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(central.length / 2, 8);
  end.writeUInt16LE(central.length / 2, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, directory, end]);
}

/** A ustar archive. */
export function tarOf(entries: Record<string, string | Buffer>): Buffer {
  const blocks: Buffer[] = [];
  for (const [name, content] of Object.entries(entries)) {
    const data = Buffer.from(content);
    const header = Buffer.alloc(512);
    header.write(name, 0, 100);
    header.write('0000644\0', 100);
    header.write('0000000\0', 108);
    header.write('0000000\0', 116);
    header.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124);
    header.write('00000000000\0', 136);
    header.write('        ', 148);
    header.write('0', 156);
    header.write('ustar\0', 257);
    header.write('00', 263);
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    blocks.push(header, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  return Buffer.concat([...blocks, Buffer.alloc(1024)]);
}

/** Every file under a directory whose bytes contain the needle (raw byte names, so non-UTF-8 names are read too). */
export function filesHolding(root: string, needle: string): string[] {
  if (!fs.existsSync(root)) return []; // never deployed
  const out: string[] = [];
  const walk = (dir: Buffer): void => {
    for (const name of fs.readdirSync(dir, { encoding: 'buffer' })) {
      const full = Buffer.concat([dir, Buffer.from('/'), name]);
      const st = fs.lstatSync(full);
      if (st.isDirectory()) walk(full);
      else if (st.isFile() && fs.readFileSync(full).includes(needle)) out.push(full.toString('latin1'));
    }
  };
  walk(Buffer.from(root));
  return out;
}
