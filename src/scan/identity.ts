import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';

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
  /** Hex SHA-256 of the executable (and, for a script, of its `version` answer too). */
  digest: string;
  /**
   * Whether the digest covers the code that runs: an ELF executable. A script
   * (a wrapper that starts another gitleaks) is keyed by its bytes and the
   * `version` it answers, but what it starts can change under the same
   * answer, so nothing is remembered of it beyond one process.
   */
  exact: boolean;
}

const ELF = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/**
 * Identifies the gitleaks at `binary` (see {@link GitleaksIdentity}). Rejects
 * when it cannot be read, or when a script's `version` fails: the message
 * then says only how it ended (a broken gitleaks may print anything, a secret
 * it was scanning included).
 */
export async function identifyGitleaks(binary: string): Promise<GitleaksIdentity> {
  const hash = crypto.createHash('sha256');
  let head: Buffer | null = null;
  // Streamed: the executable is 20-30 MB and the runner host's memory is a target.
  for await (const chunk of fs.createReadStream(binary, { highWaterMark: 1024 * 1024 })) {
    const bytes = chunk as Buffer;
    head ??= bytes.subarray(0, ELF.length);
    hash.update(bytes);
  }
  const exact = head !== null && head.equals(ELF);
  if (!exact) hash.update('\0version\0').update(await gitleaksVersion(binary));
  return { digest: hash.digest('hex'), exact };
}

/** `gitleaks version`'s answer; a failure says only how it ended. */
function gitleaksVersion(binary: string): Promise<string> {
  return new Promise<string>((resolve, reject) =>
    execFile(binary, ['version'], { timeout: 30_000 }, (error, stdout) => {
      if (!error) return resolve(stdout.trim());
      const { code, signal } = error as { code?: unknown; signal?: unknown };
      const how = typeof code === 'number' ? `exit ${code}` : typeof signal === 'string' ? `signal ${signal}` : typeof code === 'string' ? code : 'no answer';
      reject(new Error(`gitleaks version failed (${how})`));
    }),
  );
}
