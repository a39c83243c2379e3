import { vmText } from '../remote/untrusted.js';
import type { EngineEvents, EnginePhase, LogLevel } from '../sync/types.js';
import { paint, type Tone } from './colour.js';
import { jsonText, LINE_MAX, noWorkflowCommand, terminalLine } from './escape.js';

/** How the CLI writes its stderr: `text` for people, `json` (one object per line) for log shippers. */
export type LogFormat = 'text' | 'json';

/** How much it writes: `quiet` keeps warnings and errors, `verbose` adds debug lines. */
export type Verbosity = 'quiet' | 'normal' | 'verbose';

export interface LogOptions {
  format: LogFormat;
  verbosity: Verbosity;
  /** Colour the error prefix (text format, stderr on a terminal). */
  colour: boolean;
  /** The clock (tests fix it). */
  now?: () => Date;
  /** Makes a stack trace readable (source-mapped); identity by default. */
  stack?: (trace: string) => string;
}

/** One line of `--log-format json`: the fields a log shipper indexes. */
export interface JsonLogLine {
  time: string;
  level: LogLevel;
  vm: string | null;
  phase: EnginePhase | null;
  message: string;
  /** Progress lines: how far the VM's transfer is. */
  percent?: number;
  rate?: string;
  /** The CLI's own failure line: its stable code. */
  code?: string;
}

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const FLOOR: Record<Verbosity, number> = { quiet: RANK.warn, normal: RANK.info, verbose: RANK.debug };

/** A progress line every 2 s per VM is enough to show a long transfer is alive. */
const PROGRESS_EVERY_MS = 2000;

/**
 * The CLI's stderr: the engine's events and the CLI's own messages, filtered
 * by verbosity and written as text lines or JSON lines. Every message is
 * cleaned (no control characters: it may quote a VM or a commit's tree);
 * stdout is not touched (it carries the table or the `--json` document).
 */
export class Log {
  private readonly lastProgress = new Map<string, number>();
  private readonly now: () => Date;

  constructor(
    private readonly write: (text: string) => void,
    readonly options: LogOptions,
  ) {
    this.now = options.now ?? (() => new Date());
  }

  /** Whether lines of `level` are written at this verbosity. */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= FLOOR[this.options.verbosity];
  }

  /** One engine line: `[vm] message` (debug lines say so), or a JSON object. */
  line(level: LogLevel, vm: string | null, message: string, phase?: EnginePhase): void {
    if (!this.enabled(level)) return;
    if (this.options.format === 'json') {
      this.json({ level, vm, phase: phase ?? null, message });
      return;
    }
    const prefix = `${vm ? `[${vm}] ` : ''}${level === 'debug' ? 'debug: ' : ''}`;
    if (level === 'debug' && message.includes('\n')) {
      // A stack trace: one clean line per frame, the frames made readable.
      const lines = (this.options.stack ?? ((t: string) => t))(message).split('\n');
      this.write(lines.map((l, i) => terminalLine(i === 0 ? `${prefix}${l}` : `    ${l.trim()}`)).join('\n') + '\n');
      return;
    }
    this.write(`${terminalLine(`${prefix}${message}`)}\n`);
  }

  /** A VM's transfer progress, at most every 2 s per VM (and always at 100 %). */
  progress(vm: string, percent: number, rate: string): void {
    if (!this.enabled('info')) return;
    const now = Date.now();
    if (now - (this.lastProgress.get(vm) ?? 0) < PROGRESS_EVERY_MS && percent < 100) return;
    this.lastProgress.set(vm, now);
    // The rate is rsync's text: cleaned like any other.
    const speed = vmText(rate, 40);
    const message = `transfer ${percent}%${speed ? ` at ${speed}` : ''}`;
    if (this.options.format === 'json') this.json({ level: 'info', vm, phase: 'transfer', message, percent, ...(speed ? { rate: speed } : {}) });
    else this.write(`${terminalLine(`[${vm}] ${message}`)}\n`);
  }

  /**
   * The CLI's own failure: `vm-sync: code: message` (the prefix in colour on
   * a terminal), then the hint lines; or one JSON error line with the code.
   * Always written, whatever the verbosity.
   */
  failure(code: string | null, message: string, hints: string[] = []): void {
    if (this.options.format === 'json') {
      const text = [message, ...hints].join('\n').replace(/\n\s*/g, '; ');
      this.json({ level: 'error', vm: null, phase: null, message: text, ...(code ? { code } : {}) });
      return;
    }
    const prefix = paint(`vm-sync: ${code ? `${code}: ` : ''}`, 'bad', this.options.colour);
    // The message may span lines (a config error lists each problem); each line is cleaned.
    const body = message.split('\n').map((l) => noWorkflowCommand(vmText(l, LINE_MAX))).join('\n');
    this.write(`${prefix}${body}\n${hints.map((h) => `${terminalLine(h)}\n`).join('')}`);
  }

  /** A CLI message at `level` that is not about a VM (a warning of the demo, the stop on a signal). */
  note(level: LogLevel, message: string, tone?: Tone): void {
    if (!this.enabled(level)) return;
    if (this.options.format === 'json') this.json({ level, vm: null, phase: null, message });
    else this.write(`${tone ? paint(terminalLine(message), tone, this.options.colour) : terminalLine(message)}\n`);
  }

  /** The engine's events, written through this log. */
  events(extra: Partial<Pick<EngineEvents, 'vmStarted' | 'vmFinished'>> = {}): EngineEvents {
    return {
      info: (vm, message, phase) => this.line('info', vm, message, phase),
      debug: (vm, message, phase) => this.line('debug', vm, message, phase),
      warn: (vm, message, phase) => this.line('warn', vm, message, phase),
      error: (vm, message, phase) => this.line('error', vm, message, phase),
      progress: (vm, percent, rate) => this.progress(vm, percent, rate),
      ...extra,
    };
  }

  private json(fields: Omit<JsonLogLine, 'time'>): void {
    const line: JsonLogLine = { time: this.now().toISOString(), ...fields, message: vmText(fields.message, LINE_MAX) };
    this.write(`${jsonText(line)}\n`);
  }
}
