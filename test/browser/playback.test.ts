import { expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { ask, figuresOf, chromiumForFile, replyPlayed, screenshotPath, type ClientPage } from '../support/browser.ts';
import { metricValue, poll, Resources, type TestGateway } from '../support/gateway.ts';

// The browser client's playback in Debian's Chromium, against a gateway with its embedded simulator,
// which paces its speech as xiaozhi servers do (5 frames at once per sentence, then real time). The
// figures are the page's own (window.voicegw), counted in its player worklet.

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);
const REPLY_MS = REPLY_FRAMES * speech.frameMs;

const { resources, openPage } = chromiumForFile();

async function open(query = ''): Promise<{ gw: TestGateway; client: ClientPage }> {
  const gw = await resources.gateway({ WEB_ENABLED: 'true' });
  const client = await openPage(gw.port, query);
  return { gw, client };
}

it.each(['opus', 'pcm16'] as const)(
  'a typed question plays the whole reply (116 frames, 6.96 s) without an underrun at the default 120 ms, and the transcript shows its three sentences (%s downlink)',
  async (codec) => {
    expect([REPLY_FRAMES, REPLY_MS]).toEqual([116, 6960]);
    const { client } = await open(`?downlink=${codec}`);
    const { page } = client;
    expect(await page.inputValue('#target')).toBe('120');
    await ask(page, 'Can we practise English?');
    const f = await replyPlayed(page, REPLY_FRAMES);
    expect(f.codec).toBe(codec);
    expect([f.framesReceived, f.framesPlayed, f.framesDropped]).toEqual([REPLY_FRAMES, REPLY_FRAMES, 0]);
    expect(f.playedMs).toBeCloseTo(REPLY_MS, 6);
    expect(f.underruns).toBe(0);
    expect(f.firstAudioMs).toBeGreaterThan(0);
    const sentences = speech.sentences.map((s) => s.text);
    expect(f.transcript).toEqual([{ role: 'user', text: 'Can we practise English?' }, ...sentences.map((text) => ({ role: 'assistant', text }))]);
    expect(await page.locator('#transcript li.assistant').allTextContents()).toEqual(sentences);
    expect(f.errors).toEqual([]);
    expect(client.problems).toEqual([]);
    console.info(`[chromium] ${codec} downlink: ${f.framesPlayed} frames, ${f.playedMs.toFixed(0)} ms played, ${f.underruns} underruns, first audio ${f.firstAudioMs} ms`);
    if (codec === 'opus') await page.screenshot({ path: screenshotPath() });
  },
);

it('pressing to talk while the assistant speaks stops the playback within 100 ms, and the next reply plays whole', async () => {
  const { client } = await open();
  const { page } = client;
  await ask(page, 'Tell me something.');
  await page.waitForFunction(() => window.voicegw.framesPlayed >= 20);
  await page.hover('#talk');
  await page.mouse.down();
  await page.waitForFunction(() => window.voicegw.lastStopMs !== null && window.voicegw.state === 'listening');
  const stopped = await figuresOf(page);
  expect(stopped.playing).toBe(false);
  expect(stopped.bufferedMs).toBe(0);
  expect(stopped.lastStopMs).toBeLessThanOrEqual(100);
  expect(stopped.framesDropped).toBeGreaterThan(0);
  await page.waitForFunction(() => window.voicegw.uplinkMs >= 400);
  await page.mouse.up();
  // The simulator answers any utterance with its speech: the whole of it plays, none of the first reply.
  const f = await replyPlayed(page, stopped.framesPlayed + REPLY_FRAMES);
  expect(f.framesPlayed - stopped.framesPlayed).toBe(REPLY_FRAMES);
  expect(f.playedMs - stopped.playedMs).toBeCloseTo(REPLY_MS, 6);
  expect(f.framesReceived - stopped.framesReceived).toBe(REPLY_FRAMES);
  expect(f.underruns).toBe(0);
  const next = f.transcript.slice(-speech.sentences.length - 1);
  expect(next.map((l) => l.role)).toEqual(['user', ...speech.sentences.map(() => 'assistant')]);
  expect(next.slice(1).map((l) => l.text)).toEqual(speech.sentences.map((s) => s.text));
  expect(f.errors).toEqual([]);
  expect(client.problems).toEqual([]);
  console.info(`[chromium] barge-in (push-to-talk): silent ${stopped.lastStopMs} ms after the press, ${stopped.framesDropped} frames dropped; next reply first audio ${f.firstAudioMs} ms`);
});

it('the stop button aborts the reply at once, and the playout reports reach /metrics', async () => {
  const { gw, client } = await open();
  const { page } = client;
  await ask(page, 'Tell me something.');
  // Past a second of playing: a report on the beat, then the one of the stop.
  await page.waitForFunction(() => window.voicegw.framesPlayed >= 25);
  await page.click('#stop');
  await page.waitForFunction(() => window.voicegw.lastStopMs !== null && window.voicegw.state === 'ready');
  const f = await figuresOf(page);
  expect(f.lastStopMs).toBeLessThanOrEqual(100);
  expect(f.playing).toBe(false);
  // The reports carry whole milliseconds; the gateway sums their increments in seconds.
  const played = Math.round(f.playedMs) / 1000;
  const text = await poll(
    () => gw.scrape(),
    (t) => Math.abs(metricValue(t, 'voicegw_client_played_seconds_total') - played) < 1e-6,
    5000,
  );
  expect(metricValue(text, 'voicegw_client_played_seconds_total')).toBeCloseTo(played, 6);
  expect(metricValue(text, 'voicegw_client_underruns_total')).toBe(0);
  expect(metricValue(text, 'voicegw_client_buffer_seconds_count')).toBeGreaterThanOrEqual(2);
  expect(metricValue(text, 'voicegw_client_messages_total', 'type="playout"')).toBe(metricValue(text, 'voicegw_client_buffer_seconds_count'));
  expect(metricValue(text, 'voicegw_replies_total', 'outcome="aborted"')).toBe(1);
  expect(metricValue(text, 'voicegw_bad_messages_total')).toBe(0);
  expect(f.errors).toEqual([]);
  expect(client.problems).toEqual([]);
  console.info(`[chromium] abort (stop button): silent ${f.lastStopMs} ms after the click`);
});
