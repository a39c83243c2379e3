import { EventEmitter } from 'node:events';
import type { VmSession } from '../../src/remote/session.js';

/** An exec channel the test speaks for the VM: what it emits is what the VM printed, in the reads given. */
export class FakeChannel extends EventEmitter {
  readonly stderr = new EventEmitter();
  /** Every request line the session wrote. */
  readonly written: string[] = [];
  write(data: string): boolean {
    this.written.push(data);
    return true;
  }
  end(): void {}
  close(): void {}
}

/** A VM session whose only channel is `channel`. */
export function sessionWith(channel: FakeChannel, vmId = 'vm01'): VmSession {
  return { vm: { id: vmId }, openChannel: async () => channel } as unknown as VmSession;
}
