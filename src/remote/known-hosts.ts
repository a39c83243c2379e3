import crypto from 'node:crypto';

/** One usable line of an OpenSSH known_hosts file. */
interface Entry {
  marker: '' | '@revoked' | '@cert-authority';
  patterns: string[];
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

function globMatch(pattern: string, name: string): boolean {
  const regex = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 'i');
  return regex.test(name);
}

function patternMatches(pattern: string, name: string): boolean {
  if (pattern.startsWith('|1|')) {
    const [, , salt, hash] = pattern.split('|');
    if (!salt || !hash) return false;
    const digest = crypto.createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64');
    return digest === hash;
  }
  return globMatch(pattern, name);
}

/** Whether a comma-separated host field matches `name`, honouring `!negated` patterns. */
function hostMatches(patterns: string[], name: string): boolean {
  let matched = false;
  for (const pattern of patterns) {
    if (pattern.startsWith('!')) {
      if (patternMatches(pattern.slice(1), name)) return false;
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
  private readonly entries: Entry[] = [];

  constructor(text: string) {
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const fields = line.split(/\s+/);
      const marker = fields[0].startsWith('@') ? (fields.shift() as Entry['marker']) : '';
      const [hosts, type, key] = fields;
      if (!hosts || !type || !key) continue;
      const blob = Buffer.from(key, 'base64');
      if (blobType(blob) !== type) continue; // garbled line: never pins anything
      this.entries.push({ marker, patterns: hosts.split(','), type, blob });
    }
  }

  /** The name OpenSSH uses for a host and port. */
  static lookupName(host: string, port: number): string {
    return port === 22 ? host : `[${host}]:${port}`;
  }

  /** The keys pinned for host:port (revoked ones removed). */
  pinned(host: string, port: number): PinnedHost {
    const name = KnownHosts.lookupName(host, port);
    const matching = this.entries.filter((e) => hostMatches(e.patterns, name));
    const revoked = matching.filter((e) => e.marker === '@revoked').map((e) => e.blob);
    const keys = matching
      .filter((e) => e.marker === '' && !revoked.some((r) => r.equals(e.blob)))
      .map((e) => e);
    const algorithms = [...new Set(keys.flatMap((e) => ALGORITHMS[e.type] ?? []))];
    return { name, keys: keys.map((e) => e.blob), algorithms };
  }
}

/** Whether a key the server offered is one of the pinned ones. */
export function isPinned(pinned: PinnedHost, offered: Buffer): boolean {
  return pinned.keys.some((key) => key.equals(offered));
}
