// Reads a deployed tree over and over, the way an application would (resolve the
// live path once per read, then read every file), and reports every snapshot that
// mixes two commits. Usage: node tree-reader.mjs TARGET MS STOP_MARKER SHA=MARKER...
// It stops early once it has seen STOP_MARKER whole 20 times.
import fs from 'node:fs';
import path from 'node:path';

const [target, ms, stopMarker, ...pairs] = process.argv.slice(2);
const markerOf = Object.fromEntries(pairs.map((p) => p.split('=')));
const deadline = Date.now() + Number(ms);
const result = { snapshots: 0, consistent: {}, mixed: 0, examples: [] };
while (Date.now() < deadline && (result.consistent[stopMarker] ?? 0) < 20) {
  let root;
  try {
    root = fs.realpathSync(target);
  } catch {
    continue; // not deployed yet
  }
  let rev = null;
  let markers;
  try {
    try {
      rev = fs.readFileSync(path.join(root, '.sync_rev'), 'utf8').trim();
    } catch {
      rev = null;
    }
    const dir = path.join(root, 'data');
    markers = new Set(fs.readdirSync(dir).map((f) => fs.readFileSync(path.join(dir, f), 'utf8')));
  } catch (error) {
    // A file vanished under us: that is a mixed view too.
    markers = new Set([`error:${error.code}`]);
  }
  result.snapshots++;
  const expected = rev ? markerOf[rev] : undefined;
  if (markers.size === 1 && expected !== undefined && markers.has(expected)) {
    result.consistent[expected] = (result.consistent[expected] ?? 0) + 1;
  } else {
    result.mixed++;
    if (result.examples.length < 3) result.examples.push({ rev, markers: [...markers].slice(0, 3) });
  }
}
process.stdout.write(JSON.stringify(result));
