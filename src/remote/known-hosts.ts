import crypto from 'node:crypto';
import { Client } from 'ssh2';

/** One host pattern of a known_hosts line, prepared once so lookups never rebuild it. */
type Pattern =
  | { negated: boolean; kind: 'literal'; name: string }
  | { negated: boolean; kind: 'glob'; regex: RegExp }
  | { negated: boolean; kind: 'hashed'; salt: Buffer; hash: string };

/** One usable line of an OpenSSH known_hosts file. */
interface Entry {
  /** Position in the file: lookups return keys in file order. */
  index: number;
  marker: '' | '@revoked' | '@cert-authority';
  patterns: Pattern[];
  type: string;
  blob: Buffer;
}

/** The pinned keys for one host, ready to hand to ssh2. */
export interface PinnedHost {
  /** `host` on port 22, `[host]:port` otherwise: the name OpenSSH looks up. */
  name: string;
  keys: Buffer[];
  /** ssh2 host key algorithms to offer, restricted to the pinned key types. */
  algorithms: string[];
  /** Keys that a `@revoked` line for this host vetoes: never accepted, and named as revoked when offered. */
  revoked: Buffer[];
}

const ALGORITHMS: Record<string, string[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

/** OpenSSH's `SHA256:` fingerprint of a public key blob (base64, no padding). */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${crypto.createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type written inside an SSH public key blob (its first length-prefixed string). */
function blobType(blob: Buffer): string | null {
  if (blob.length < 4) return null;
  const len = blob.readUInt32BE(0);
  return blob.length >= 4 + len ? blob.subarray(4, 4 + len).toString('latin1') : null;
}

function parsePattern(raw: string): Pattern | null {
  const negated = raw.startsWith('!');
  const text = negated ? raw.slice(1) : raw;
  if (text.startsWith('|1|')) {
    const [, , salt, hash] = text.split('|');
    return salt && hash ? { negated, kind: 'hashed', salt: Buffer.from(salt, 'base64'), hash } : null;
  }
  if (!/[*?]/.test(text)) return { negated, kind: 'literal', name: text.toLowerCase() };
  const source = text.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return { negated, kind: 'glob', regex: new RegExp(`^${source}$`, 'i') };
}

function patternMatches(pattern: Pattern, name: string): boolean {
  switch (pattern.kind) {
    case 'literal':
      return pattern.name === name.toLowerCase();
    case 'glob':
      return pattern.regex.test(name);
    case 'hashed':
      return crypto.createHmac('sha1', pattern.salt).update(name).digest('base64') === pattern.hash;
  }
}

/** Whether a line's host patterns match `name`, honouring `!negated` patterns. */
function hostMatches(patterns: Pattern[], name: string): boolean {
  let matched = false;
  for (const pattern of patterns) {
    if (pattern.negated) {
      if (patternMatches(pattern, name)) return false;
    } else if (patternMatches(pattern, name)) {
      matched = true;
    }
  }
  return matched;
}

/**
 * A parsed known_hosts file. Only plain host-key lines pin a key; `@revoked`
 * lines veto one; `@cert-authority` lines are ignored (vm-sync does not accept
 * host certificates, so a CA line must never count as a pinned key).
 */
export class KnownHosts {
  /** Lines whose positive patterns are all plain names, by each of those names (lower case). */
  private readonly byName = new Map<string, Entry[]>();
  /** Lines with a wildcard or hashed positive pattern: these are tested one by one. */
  private readonly scanned: Entry[] = [];

  constructor(text: string) {
    // A fleet's known_hosts has a line per VM and is looked up once per VM:
    // indexing plain names keeps that linear instead of lines x VMs.
    let index = 0;
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const fields = line.split(/\s+/);
      const marker = fields[0].startsWith('@') ? (fields.shift() as Entry['marker']) : '';
      const [hosts, type, key] = fields;
      if (!hosts || !type || !key) continue;
      const blob = Buffer.from(key, 'base64');
      if (blobType(blob) !== type) continue; // garbled line: never pins anything
      // A malformed hashed name matches nothing: dropping it changes no lookup.
      const patterns = hosts.split(',').map(parsePattern).filter((p): p is Pattern => p !== null);
      const entry: Entry = { index: index++, marker, patterns, type, blob };
      const positive = entry.patterns.filter((p) => !p.negated);
      if (positive.every((p) => p.kind === 'literal')) {
        for (const name of new Set(positive.map((p) => (p as { name: string }).name))) {
          const list = this.byName.get(name);
          if (list) list.push(entry);
          else this.byName.set(name, [entry]);
        }
      } else {
        this.scanned.push(entry);
      }
    }
  }

  /** The name OpenSSH uses for a host and port. */
  static lookupName(host: string, port: number): string {
    return port === 22 ? host : `[${host}]:${port}`;
  }

  /** The keys pinned for host:port (revoked ones removed, and listed apart). */
  pinned(host: string, port: number): PinnedHost {
    const name = KnownHosts.lookupName(host, port);
    const candidates = [...(this.byName.get(name.toLowerCase()) ?? []), ...this.scanned];
    const matching = candidates.filter((e) => hostMatches(e.patterns, name)).sort((x, y) => x.index - y.index);
    const revoked = matching.filter((e) => e.marker === '@revoked').map((e) => e.blob);
    const keys = matching.filter((e) => e.marker === '' && !revoked.some((r) => r.equals(e.blob)));
    const algorithms = [...new Set(keys.flatMap((e) => ALGORITHMS[e.type] ?? []))];
    return { name, keys: keys.map((e) => e.blob), algorithms, revoked };
  }
}

/** Whether a key the server offered is one of the pinned ones. */
export function isPinned(pinned: PinnedHost, offered: Buffer): boolean {
  return pinned.keys.some((key) => key.equals(offered));
}

/** Whether a key the server offered matches a `@revoked` line for this host. */
export function isRevoked(pinned: PinnedHost, offered: Buffer): boolean {
  return pinned.revoked.some((key) => key.equals(offered));
}

/** The key type named inside a public key blob ("ssh-ed25519"), or "unknown". */
export function keyType(blob: Buffer): string {
  return blobType(blob) ?? 'unknown';
}

/** What a VM offers as host keys, seen from a handshake that stops before authenticating. */
export interface OfferedHostKeys {
  /** The host key algorithms the VM lists (names only, at most 16; anything odd is dropped). */
  algorithms: string[];
  /** The key the VM presented when any algorithm was allowed, or null if none was agreed. */
  key: Buffer | null;
}

const ALGORITHM_NAME = /^[A-Za-z0-9@._+-]{1,64}$/;

/**
 * Asks a VM which host key algorithms it offers, without restricting them and
 * without authenticating (the handshake is stopped once the key is seen). Used
 * only to explain a failed connection whose pinned key types the VM does not
 * offer: ssh2 then fails with "no matching host key format" and names neither
 * side. Never rejects; an unreachable VM gives empty answers. When `signal`
 * aborts (the run ends, the VM's budget is spent), it answers at once with
 * what it saw so far: a VM silent to the probe must not hold a run that is
 * over for the probe's whole timeout.
 */
export function probeHostKeys(host: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<OfferedHostKeys> {
  return new Promise((resolve) => {
    const client = new Client();
    const seen: OfferedHostKeys = { algorithms: [], key: null };
    let settled = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', stop);
      client.end();
      resolve(seen);
    };
    // Destroyed first: ssh2's end() only half-closes (a VM that never answers would keep the socket, and the
    // handshake's timer, for the probe's whole timeout), and ssh2's destroy() does nothing once end() ran.
    const stop = (): void => {
      client.destroy();
      finish();
    };
    if (signal?.aborted) return stop();
    signal?.addEventListener('abort', stop, { once: true });
    client.on('error', finish);
    client.on('close', finish);
    client.connect({
      host,
      port,
      username: 'vm-sync-probe',
      readyTimeout: timeoutMs,
      // ssh2 reports the server's KEXINIT lists only through its debug hook.
      debug: (line: string) => {
        const prefix = 'Handshake: (remote) Host key format: ';
        if (!line.startsWith(prefix)) return;
        seen.algorithms = line.slice(prefix.length).split(',').filter((name) => ALGORITHM_NAME.test(name)).slice(0, 16);
      },
      hostVerifier: (key: Buffer) => {
        seen.key = key;
        return false; // the key is all we wanted
      },
    });
  });
}
