import { expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { ask, figuresOf, chromiumForFile, replyPlayed, type ClientPage } from '../support/browser.ts';
import { Resources } from '../support/gateway.ts';

// Which downlink the browser client asks for, and what it does when WebCodecs cannot decode Opus after
// all: Chromium's own AudioDecoder is stood in for before the page loads.

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);

const { resources, openPage } = chromiumForFile();

async function open(beforeLoad: () => void): Promise<ClientPage> {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const client = await openPage(gw.port, '?downlink=opus', true, beforeLoad);
  return client;
}

it('a browser that says it cannot decode Opus gets pcm16, even when opus is asked for', async () => {
  const { page, problems } = await open(() => {
    AudioDecoder.isConfigSupported = async (config) => ({ supported: false, config });
  });
  const f = await figuresOf(page);
  expect([f.state, f.codec, f.errors]).toEqual(['ready', 'pcm16', []]);
  expect(problems).toEqual([]);
});

it('an Opus decoder that keeps failing is replaced three times, then the page reconnects with pcm16 and the reply plays', async () => {
  const { page, problems } = await open(() => {
    // Every packet fails, as a broken decoder's would: closed at once, the error reported a task later.
    window.AudioDecoder = class extends AudioDecoder {
      private readonly fail: (error: DOMException) => void;
      constructor(init: AudioDecoderInit) {
        super(init);
        this.fail = init.error;
      }
      override decode(): void {
        this.close();
        setTimeout(() => this.fail(new DOMException('test decoder failure', 'EncodingError')));
      }
    };
  });
  const first = await figuresOf(page);
  expect(first.codec).toBe('opus');
  await ask(page, 'Can we practise English?');
  await page.waitForFunction(() => window.voicegw.codec === 'pcm16' && window.voicegw.state === 'ready');
  const errors = (await figuresOf(page)).errors;
  expect(errors.map((e) => [e.kind, e.code])).toEqual([
    ['client', 'decoder'],
    ['client', 'decoder'],
    ['client', 'decoder'],
    ['client', 'decoder'],
  ]);
  expect(errors[3]!.message).toMatch(/^The Opus decoder failed 4 times \(last: .*\)\. Reconnecting with pcm16 audio/);
  // The new session plays what the old one could not.
  const before = await figuresOf(page);
  await ask(page, 'Can we practise English?');
  const f = await replyPlayed(page, before.framesPlayed + REPLY_FRAMES);
  expect(f.framesPlayed - before.framesPlayed).toBe(REPLY_FRAMES);
  expect(f.sessionId).not.toBe(first.sessionId);
  expect(f.errors).toEqual(errors);
  expect(problems).toEqual([]);
});
