import crypto from 'node:crypto';

function pick(alphabet: string, n: number): string {
  const bytes = crypto.randomBytes(n);
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/**
 * Fresh, real-looking secrets in the formats gitleaks' default rules detect.
 * Generated per run, so no secret is ever committed to this repository.
 */
export function plantedSecrets(): Record<'github' | 'slack' | 'privateKey' | 'awsKeyId' | 'awsSecret', string> {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    github: `ghp_${pick(ALNUM, 36)}`,
    slack: `xoxb-${pick('0123456789', 12)}-${pick('0123456789', 13)}-${pick(ALNUM, 24)}`,
    privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    awsKeyId: `AKIA${pick('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', 16)}`,
    awsSecret: pick(`${ALNUM}+/`, 40),
  };
}

/** The file contents that carry them. */
export function secretFiles(s: ReturnType<typeof plantedSecrets>): Record<string, string> {
  return {
    'config/github.env': `GITHUB_TOKEN=${s.github}\n`,
    'config/slack.yml': `slack:\n  bot_token: ${s.slack}\n`,
    'deploy/id_rsa': s.privateKey,
    'config/aws.ini': `[default]\naws_access_key_id = ${s.awsKeyId}\naws_secret_access_key = ${s.awsSecret}\n`,
  };
}

/**
 * Every distinctive fragment of the secrets (the whole value and overlapping
 * 12-character slices of it), to search captured output for.
 */
export function secretFragments(s: ReturnType<typeof plantedSecrets>): string[] {
  const out: string[] = [];
  for (const value of Object.values(s)) {
    const body = value.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
    out.push(body);
    for (let i = 0; i + 12 <= body.length; i += 6) out.push(body.slice(i, i + 12));
  }
  return out;
}
