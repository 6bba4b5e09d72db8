import { expect, it } from 'vitest';
import { ask, figuresOf, chromiumForFile, replyPlayed, type ClientPage } from '../support/browser.ts';
import { decodeReference, Resources, type TestGateway } from '../support/gateway.ts';

// The browser client's microphone in Debian's Chromium: the fake capture device plays
// test/fixtures/utterance-16k.wav in a loop, and the page sends it up as pcm16 at 16 kHz.

/** The uplink frame the page announces: the gateway cuts, and pads, the utterance into these. */
const UPLINK_FRAME_MS = 60;

/** Mean power of 16-bit PCM, in dB below full scale. */
function levelDb(pcm: Buffer): number {
  const samples = new Int16Array(pcm.buffer, pcm.byteOffset, pcm.length / 2);
  const power = samples.reduce((sum, s) => sum + s * s, 0) / samples.length;
  return 10 * Math.log10(power / 32768 ** 2);
}

const { resources, openPage } = chromiumForFile();

async function open(env: Record<string, string> = {}): Promise<{ gw: TestGateway; client: ClientPage }> {
  const gw = await resources.gateway({ WEB_ENABLED: 'true', ...env });
  const client = await openPage(gw.port);
  return { gw, client };
}

it('push-to-talk sends the microphone, and the echo of the utterance plays back at its length within one frame', async () => {
  const { gw, client } = await open({ SIM_REPLY: 'echo' });
  const { page } = client;
  await page.hover('#talk');
  await page.mouse.down();
  // The press lasts until 1.5 s of the microphone has gone up (the fake device loops, so it always speaks).
  await page.waitForFunction(() => window.voicegw.uplinkMs >= 1500);
  await page.mouse.up();
  const f = await replyPlayed(page, 1);
  const echoFrames = Math.ceil(f.uplinkMs / UPLINK_FRAME_MS);
  const uplink = gw.simulator!.sessions[0]!.received.audio;
  expect(uplink.length).toBe(echoFrames);
  // What went up is the fixture's speech, not silence: the microphone path carries it.
  expect(levelDb(Buffer.concat(decodeReference(uplink, 16000)))).toBeGreaterThan(-35);
  expect(Math.abs(f.playedMs - f.uplinkMs)).toBeLessThan(UPLINK_FRAME_MS);
  expect(f.framesPlayed).toBe(echoFrames);
  expect(f.underruns).toBe(0);
  const echo = `echo: ${(echoFrames * UPLINK_FRAME_MS / 1000).toFixed(2)} s of speech`;
  expect(f.transcript).toEqual([
    { role: 'user', text: echo },
    { role: 'assistant', text: echo },
  ]);
  expect(f.errors).toEqual([]);
  expect(client.problems).toEqual([]);
  console.info(`[chromium] push-to-talk echo: ${f.uplinkMs} ms sent, ${f.playedMs.toFixed(0)} ms played back, first audio ${f.firstAudioMs} ms after the release`);
});

it('hands-free sends the microphone in auto mode, and speaking over the reply barges in', async () => {
  const { gw, client } = await open();
  const { page } = client;
  await ask(page, 'Tell me something.');
  await page.waitForFunction(() => window.voicegw.framesPlayed >= 10);
  // The fake microphone is speaking: once hands-free hears it, that is a barge-in.
  await page.check('#hands-free');
  await page.waitForFunction(() => window.voicegw.lastStopMs !== null && window.voicegw.state === 'listening');
  const f = await figuresOf(page);
  expect(f.playing).toBe(false);
  expect(f.lastStopMs).toBeLessThanOrEqual(100);
  await page.waitForFunction(() => window.voicegw.uplinkMs >= 600);
  const sim = gw.simulator!.sessions[0]!;
  expect(sim.received.json.filter((m) => m.type !== 'hello').map((m) => `${m.type} ${m.state ?? ''} ${m.mode ?? ''}`.trim())).toEqual([
    'listen detect',
    'abort',
    'listen start auto',
  ]);
  await expect.poll(() => sim.received.audio.length).toBeGreaterThan(0);
  // Read after the last wait: an error of the utterance itself (hello_required, bad_audio) would be in it.
  const after = await figuresOf(page);
  expect(after.errors).toEqual([]);
  expect(after.uplinkDropped).toBe(0);
  // Hands-free turned off mid-utterance: what was said so far is the turn (listen stop), and it is answered.
  await page.uncheck('#hands-free');
  await page.waitForFunction(() => window.voicegw.state === 'speaking');
  expect(sim.received.json.filter((m) => m.type === 'listen').map((m) => m.state)).toEqual(['detect', 'start', 'stop']);
  expect(client.problems).toEqual([]);
  console.info(`[chromium] barge-in (hands-free voice): silent ${f.lastStopMs} ms after the onset was heard`);
});
