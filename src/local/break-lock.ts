import crypto from 'node:crypto';
import fs from 'node:fs';

/**
 * Removes a runner-host lock (a symbolic link whose target is its holder's
 * record) that the caller found abandoned, holding `seen`.
 *
 * Two waiters may find the same abandoned lock; without care the slower one
 * would delete the lock the faster one has just taken. So breaking is itself
 * serialised by a `<lock>.break` marker symlink, and under it the lock is
 * removed only if it still holds `seen`. A marker older than `markerStaleMs`
 * was left by a breaker that was killed, and is removed.
 *
 * Returns false when another waiter holds the marker (try again after a poll),
 * true when this call broke the lock or found it gone.
 */
export function breakAbandonedLock(lockPath: string, seen: string, markerStaleMs: number): boolean {
  const marker = `${lockPath}.break`;
  const mine = `${process.pid}:${crypto.randomBytes(6).toString('hex')}`;
  try {
    fs.symlinkSync(mine, marker);
  } catch {
    try {
      if (Date.now() - fs.lstatSync(marker).mtimeMs > markerStaleMs) fs.unlinkSync(marker);
    } catch {
      // gone already
    }
    return false;
  }
  try {
    if (fs.readlinkSync(lockPath) === seen) fs.unlinkSync(lockPath);
    return true;
  } catch {
    return true; // already gone
  } finally {
    try {
      if (fs.readlinkSync(marker) === mine) fs.unlinkSync(marker);
    } catch {
      // gone already
    }
  }
}
