import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as tc from '@actions/tool-cache';
import { getErrorMessage, VmSyncError } from '../errors.js';

import { DEFAULT_GITLEAKS_VERSION } from './pinned.js';

/** The gitleaks version the action installs when none is given. */
export { DEFAULT_GITLEAKS_VERSION };

/**
 * SHA-256 of the official release archives, pinned in the code: a download is
 * used only if it matches. Values from the v8.30.1 release's checksums file,
 * cross-checked against several independent projects that pin the same
 * archives. Add a version here (all of its platforms) to allow it.
 */
export const GITLEAKS_SHA256: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  '8.30.1': {
    'linux-x64': '551f6fc83ea457d62a0d98237cbad105af8d557003051f41f3e7ca7b3f2470eb',
    'linux-arm64': 'e4a487ee7ccd7d3a7f7ec08657610aa3606637dab924210b3aee62570fb4b080',
  },
};

export interface InstallOptions {
  version?: string;
  platform?: NodeJS.Platform;
  arch?: string;
  /** Where releases are downloaded from (tests point it at a loopback server). */
  baseUrl?: string;
  /** The checksum table (tests pass their own). */
  checksums?: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

/**
 * Returns the path of a verified gitleaks binary of `version`, downloading the
 * official release archive into the runner's tool cache the first time:
 * download, check its SHA-256 against the pinned table, extract, cache. An
 * unknown version or platform, a failed download or a checksum mismatch is an
 * error; nothing unverified is ever cached or run.
 */
export async function installGitleaks(options: InstallOptions = {}): Promise<string> {
  const version = (options.version ?? DEFAULT_GITLEAKS_VERSION).replace(/^v/, '');
  const platform = options.platform ?? process.platform;
  const arch = options.arch ?? process.arch;
  const key = `${platform}-${arch}`;
  const expected = (options.checksums ?? GITLEAKS_SHA256)[version]?.[key];
  if (!expected) {
    throw new VmSyncError('gitleaks_missing', `no pinned checksum for gitleaks ${version} on ${key}: use a pinned version (${Object.keys(options.checksums ?? GITLEAKS_SHA256).join(', ')}) or install gitleaks yourself and pass gitleaks-path.`);
  }
  const cached = tc.find('gitleaks', version, arch);
  if (cached) return path.join(cached, 'gitleaks');

  const assetArch = arch === 'x64' ? 'x64' : arch;
  const asset = `gitleaks_${version}_${platform}_${assetArch}.tar.gz`;
  const url = `${options.baseUrl ?? 'https://github.com/gitleaks/gitleaks/releases/download'}/v${version}/${asset}`;
  let archive: string;
  try {
    archive = await tc.downloadTool(url);
  } catch (error) {
    throw new VmSyncError('gitleaks_missing', `cannot download ${url}: ${getErrorMessage(error)}`);
  }
  let extracted: string | null = null;
  try {
    const actual = crypto.createHash('sha256').update(fs.readFileSync(archive)).digest('hex');
    if (actual !== expected) {
      throw new VmSyncError('gitleaks_missing', `checksum mismatch for ${asset}: expected ${expected}, got ${actual}. The download was discarded; nothing was run.`);
    }
    extracted = await tc.extractTar(archive);
    if (!fs.existsSync(path.join(extracted, 'gitleaks'))) {
      throw new VmSyncError('gitleaks_missing', `${asset} does not contain a gitleaks binary`);
    }
    const dir = await tc.cacheDir(extracted, 'gitleaks', version, arch);
    return path.join(dir, 'gitleaks');
  } finally {
    fs.rmSync(archive, { force: true });
    if (extracted) fs.rmSync(extracted, { recursive: true, force: true });
  }
}
