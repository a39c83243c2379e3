import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { FakeGitHub } from './github-server.js';
import { exitWhileSampling } from './processes.js';
import type { World } from './world.js';

/** What one run of the bundled action left behind. */
export interface ActionRun {
  code: number | null;
  stdout: string;
  stderr: string;
  outputs: Record<string, string>;
  summary: string;
  /** Command lines of every process seen while the action ran. */
  processes: string[];
}

/** The token every action run is given (tests assert it never becomes visible). */
export const ACTION_TOKEN = `ghs_${'T0k3n'.repeat(7)}x`;

/**
 * Runs the committed bundle dist/index.js the way the Actions runner runs it:
 * INPUT_* variables, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_EVENT_PATH,
 * and GITHUB_API_URL / GITHUB_SERVER_URL pointing at the loopback fake GitHub.
 * Asynchronously: the fake GitHub answers from the test's own process.
 */
export async function runAction(world: World, github: FakeGitHub, inputs: Record<string, string>, event: { name: string; payload: object; sha: string }): Promise<ActionRun> {
  const dir = fs.mkdtempSync(path.join(world.dir, 'runner-'));
  const files = { output: path.join(dir, 'output'), summary: path.join(dir, 'summary.md'), event: path.join(dir, 'event.json') };
  fs.writeFileSync(files.output, '');
  fs.writeFileSync(files.summary, '');
  fs.writeFileSync(files.event, JSON.stringify(event.payload));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    GITHUB_ACTIONS: 'true',
    GITHUB_REPOSITORY: 'acme/app',
    GITHUB_SHA: event.sha,
    GITHUB_EVENT_NAME: event.name,
    GITHUB_EVENT_PATH: files.event,
    GITHUB_RUN_ID: '4242',
    GITHUB_SERVER_URL: github.url,
    GITHUB_API_URL: `${github.url}/api/v3`,
    GITHUB_WORKSPACE: world.dir,
    GITHUB_OUTPUT: files.output,
    GITHUB_STEP_SUMMARY: files.summary,
    RUNNER_TEMP: path.join(dir, 'temp'),
    RUNNER_TOOL_CACHE: path.join(dir, 'toolcache'),
    'INPUT_GITHUB-TOKEN': ACTION_TOKEN,
    INPUT_CONFIG: path.basename(world.configPath),
  };
  for (const [name, value] of Object.entries(inputs)) env[`INPUT_${name.toUpperCase()}`] = value;
  const child = spawn(process.execPath, [path.join(process.cwd(), 'dist', 'index.js')], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  // Sample every process's command line while the action runs (git, rsync, gitleaks, the bridge...).
  const { code, processes } = await exitWhileSampling(child, 25);
  const outputs: Record<string, string> = {};
  // GITHUB_OUTPUT uses name<<DELIMITER ... DELIMITER blocks.
  const text = fs.readFileSync(files.output, 'utf8');
  for (const match of text.matchAll(/^(.+?)<<(.+)\n([\s\S]*?)\n\2$/gm)) outputs[match[1]] = match[3];
  return { code, stdout, stderr, outputs, summary: fs.readFileSync(files.summary, 'utf8'), processes };
}
