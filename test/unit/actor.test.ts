import { describe, expect, it } from 'vitest';
import { Actor } from '../../src/actors/actor.ts';

type Message = { name: string; then?: (actor: Recorder) => void; throws?: boolean };

/** An actor that records what it handles, and can be told to post or throw from inside a handler. */
class Recorder extends Actor<Message> {
  readonly log: string[] = [];
  readonly failures: { error: unknown; message: string }[] = [];
  depth = 0;
  maxDepth = 0;

  protected receive(message: Message): void {
    this.depth++;
    this.maxDepth = Math.max(this.maxDepth, this.depth);
    try {
      this.log.push(`begin ${message.name}`);
      message.then?.(this);
      if (message.throws) throw new Error(`boom in ${message.name}`);
      this.log.push(`end ${message.name}`);
    } finally {
      this.depth--;
    }
  }

  protected failed(error: unknown, message: Message): void {
    this.failures.push({ error, message: message.name });
  }
}

describe('Actor mailbox', () => {
  it('handles messages in the order they were posted', () => {
    const actor = new Recorder();
    for (const name of ['a', 'b', 'c', 'd']) actor.post({ name });
    expect(actor.log).toEqual(['begin a', 'end a', 'begin b', 'end b', 'begin c', 'end c', 'begin d', 'end d']);
  });

  it('handles a post to an idle mailbox at once, in the caller\'s stack', () => {
    const actor = new Recorder();
    actor.post({ name: 'now' });
    expect(actor.log).toEqual(['begin now', 'end now']);
  });

  it('handles a message posted from inside a handler after the current one, not re-entrantly', () => {
    const actor = new Recorder();
    actor.post({ name: 'outer', then: (self) => self.post({ name: 'inner' }) });
    expect(actor.log).toEqual(['begin outer', 'end outer', 'begin inner', 'end inner']);
    expect(actor.maxDepth).toBe(1);
  });

  it('handles messages posted from inside handlers in post order, behind what was already waiting', () => {
    const actor = new Recorder();
    actor.post({
      name: 'first',
      then: (self) => {
        self.post({ name: 'second', then: (s) => s.post({ name: 'fourth' }) });
        self.post({ name: 'third' });
      },
    });
    expect(actor.log.filter((l) => l.startsWith('begin'))).toEqual(['begin first', 'begin second', 'begin third', 'begin fourth']);
    expect(actor.maxDepth).toBe(1);
  });

  it('hands a handler that throws to failed() and still handles the later messages', () => {
    const actor = new Recorder();
    actor.post({
      name: 'bad',
      throws: true,
      then: (self) => self.post({ name: 'after' }),
    });
    actor.post({ name: 'later' });
    expect(actor.failures).toHaveLength(1);
    expect(actor.failures[0]!.message).toBe('bad');
    expect((actor.failures[0]!.error as Error).message).toBe('boom in bad');
    expect(actor.log).toEqual(['begin bad', 'begin after', 'end after', 'begin later', 'end later']);
  });

  it('stays usable after a failure: the next post is handled at once', () => {
    const actor = new Recorder();
    actor.post({ name: 'bad', throws: true });
    actor.post({ name: 'ok' });
    expect(actor.log.at(-1)).toBe('end ok');
    expect(actor.maxDepth).toBe(1);
  });

  it('handles each message once, however many arrive during a busy turn', () => {
    const actor = new Recorder();
    actor.post({
      name: 'burst',
      then: (self) => {
        for (let i = 0; i < 100; i++) self.post({ name: `m${i}` });
      },
    });
    const begun = actor.log.filter((l) => l.startsWith('begin')).map((l) => l.slice(6));
    expect(begun).toEqual(['burst', ...Array.from({ length: 100 }, (_, i) => `m${i}`)]);
  });

  it('handles a message a failing handler posted before it threw', () => {
    const actor = new Recorder();
    actor.post({ name: 'x', throws: true, then: (self) => self.post({ name: 'y', throws: true }) });
    expect(actor.failures.map((f) => f.message)).toEqual(['x', 'y']);
  });
});
