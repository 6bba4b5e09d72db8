import type { WebSocket } from 'ws';
import { expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { ask, chromiumForFile, replyPlayed } from '../support/browser.ts';
import { fakeUpstream, SERVER_HELLO, sendJson } from '../support/fake-upstream.ts';
import { metricValue, poll, Resources } from '../support/gateway.ts';

// The browser client against a hand-made voice service, for what the simulator does not do: a reply that
// stops for a while in its middle and then goes on (its faults stall a session for good, and the gateway
// then reconnects: the reply never resumes), and MCP requests from the service's tools.

const speech = loadSpeech();
const REPLY_FRAMES = speech.sentences.reduce((n, s) => n + s.packets.length, 0);
/** Frames sent at once before the pause: 600 ms of audio. */
const LEAD_FRAMES = 10;
/**
 * The pause: far past the lead and the 120 ms jitter target, so that the page's buffer surely runs dry
 * once, whatever the timers' jitter; far below UPSTREAM_STALL_TIMEOUT_MS (15 s), so that the gateway waits.
 */
const PAUSE_MS = 1500;

const { resources, openPage } = chromiumForFile();

/** Speaks the fixture's reply with a pause after its first LEAD_FRAMES frames, the rest at once after it. */
function replyWithPause(ws: WebSocket, text: unknown): void {
  sendJson(ws, { type: 'stt', text });
  sendJson(ws, { type: 'llm', text: '😊', emotion: 'happy' });
  sendJson(ws, { type: 'tts', state: 'start' });
  const items = speech.sentences.flatMap((s) => [{ type: 'tts', state: 'sentence_start', text: s.text } as Record<string, unknown>, ...s.packets]);
  const pause = items.findIndex((_, i) => items.slice(0, i).filter(Buffer.isBuffer).length === LEAD_FRAMES);
  const send = (from: number, to: number) => {
    for (const item of items.slice(from, to)) Buffer.isBuffer(item) ? ws.send(item) : sendJson(ws, item);
  };
  send(0, pause);
  setTimeout(() => {
    send(pause, items.length);
    sendJson(ws, { type: 'tts', state: 'stop' });
  }, PAUSE_MS);
}

it('a reply that stops mid-way for longer than the buffer holds counts one underrun, on the page and in /metrics', async () => {
  const url = await fakeUpstream(resources, (ws, m) => {
    if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
    else if (m.type === 'listen' && m.state === 'detect') replyWithPause(ws, m.text);
  });
  const gw = await resources.gateway({ WEB_ENABLED: 'true', UPSTREAM_URL: url });
  const client = await openPage(gw.port);
  await ask(client.page, 'Say something, slowly.');
  const f = await replyPlayed(client.page, REPLY_FRAMES);
  expect(f.underruns).toBe(1);
  expect([f.framesReceived, f.framesPlayed, f.framesDropped]).toEqual([REPLY_FRAMES, REPLY_FRAMES, 0]);
  expect(f.playedMs).toBeCloseTo(REPLY_FRAMES * speech.frameMs, 6);
  // The report of the reply's end carries the underrun to the gateway's metrics.
  const text = await poll(
    () => gw.scrape(),
    (t) => metricValue(t, 'voicegw_client_underruns_total') === 1 && metricValue(t, 'voicegw_client_played_seconds_total') > 6.9,
    5000,
  );
  expect(metricValue(text, 'voicegw_client_underruns_total')).toBe(1);
  expect(metricValue(text, 'voicegw_client_played_seconds_total')).toBeCloseTo(Math.round(f.playedMs) / 1000, 6);
  expect(metricValue(text, 'voicegw_bad_messages_total')).toBe(0);
  expect(f.errors).toEqual([]);
  expect(client.problems).toEqual([]);
  console.info(`[chromium] mid-reply pause of ${PAUSE_MS} ms after ${LEAD_FRAMES * speech.frameMs} ms of audio: ${f.underruns} underrun on the page, ${metricValue(text, 'voicegw_client_underruns_total')} in /metrics; first audio ${f.firstAudioMs} ms`);
});

it("answers the voice service's MCP requests with method not found, and its notifications not at all", async () => {
  const mcp: Record<string, unknown>[] = [];
  const url = await fakeUpstream(resources, (ws, m) => {
    if (m.type === 'hello') {
      sendJson(ws, SERVER_HELLO);
      sendJson(ws, { type: 'mcp', session_id: 'fake', payload: { jsonrpc: '2.0', method: 'notifications/initialized' } });
      sendJson(ws, { type: 'mcp', session_id: 'fake', payload: { jsonrpc: '2.0', id: 2, method: 'tools/list', params: {} } });
    } else if (m.type === 'mcp') mcp.push(m);
  });
  const gw = await resources.gateway({ WEB_ENABLED: 'true', UPSTREAM_URL: url });
  const client = await openPage(gw.port);
  // The notification came before the request: had it been answered, that answer would be first.
  await expect.poll(() => mcp.length).toBeGreaterThan(0);
  expect(mcp).toEqual([
    { type: 'mcp', session_id: 'fake', payload: { jsonrpc: '2.0', id: 2, error: { code: -32601, message: 'Method not found', data: { method: 'tools/list' } } } },
  ]);
  expect(await client.page.evaluate(() => window.voicegw.errors)).toEqual([]);
  expect(client.problems).toEqual([]);
});
