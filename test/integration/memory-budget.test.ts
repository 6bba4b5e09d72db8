// What one client can make the gateway hold is bounded in bytes (SESSION_BUFFER_BYTES): clients that
// stop reading and keep sending, measured in a real gateway process, by its resident memory and by the
// gateway's own accounting (voicegw_session_buffer_bytes).
import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech } from '../../src/sim/speech.ts';
import { expectedReplyShape, httpGet, isState, metricValue, poll, Resources, shapeOf } from '../support/gateway.ts';
import { Children } from '../support/gateway-process.ts';
import { RawClient } from '../support/raw-client.ts';

const speech = loadSpeech();
const BUDGET = 256 * 1024;
const HIGH_WATER = 256 * 1024;
/** What a busy V8 heap and allocator may keep beyond what sessions hold: parsing 60 KB frames by the hundred. */
const MARGIN = 48 * 1024 * 1024;

const res = new Resources();
const children = new Children();
const raws: RawClient[] = [];
afterEach(async () => {
  for (const raw of raws.splice(0)) raw.destroy();
  children.kill();
  await res.dispose();
});

async function scrape(port: number): Promise<string> {
  return (await httpGet(port, '/metrics')).body;
}

/** A client past its hello that then stops reading: whatever the gateway sends it piles up. */
async function deafClient(port: number, hello: Record<string, unknown> = {}): Promise<RawClient> {
  const client = await RawClient.connect(port);
  raws.push(client);
  client.send({ type: 'hello', ...hello });
  await client.until((r) => r.json.some(isState('ready')));
  client.pause();
  return client;
}

describe("a session's memory budget", () => {
  it('keeps five clients that stop reading and flood pings with 60 KB ids within budget x 5 plus a fixed margin, and a healthy session whole beside them', async () => {
    const sim = await res.simulator();
    const gw = await children.start(sim.url, { SESSION_BUFFER_BYTES: String(BUDGET), SOCKET_HIGH_WATER_BYTES: String(HIGH_WATER) });
    const healthy = await res.client(gw.url);
    await healthy.hello();
    // The baseline has one session's codecs and a reply's worth of warm code in it.
    await healthy.textReply('warm up');
    const before = metricValue(await scrape(gw.port), 'voicegw_process_resident_memory_bytes');

    const hostile = await Promise.all(Array.from({ length: 5 }, () => deafClient(gw.port)));
    const ping = { type: 'ping', id: 'x'.repeat(60_000) };
    const rounds = 300;
    for (let i = 0; i < rounds; i++) for (const client of hostile) client.send(ping);
    let peakHeld = 0;
    const text = await poll(
      async () => {
        const t = await scrape(gw.port);
        peakHeld = Math.max(peakHeld, metricValue(t, 'voicegw_session_buffer_bytes'));
        return t;
      },
      (t) => metricValue(t, 'voicegw_bad_messages_total', 'reason="bad_field"') === rounds * hostile.length,
      30_000,
      50,
    );
    const reply = await healthy.textReply('Are you still there?');
    const after = metricValue(await scrape(gw.port), 'voicegw_process_resident_memory_bytes');

    expect(metricValue(text, 'voicegw_bad_messages_total', 'reason="bad_field"')).toBe(rounds * hostile.length);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(peakHeld).toBeLessThanOrEqual(hostile.length * BUDGET);
    expect(after - before).toBeLessThan(hostile.length * (BUDGET + HIGH_WATER) + MARGIN);
    console.log(`5 deaf clients, ${rounds} pings of 60 KB each: RSS ${(before / 2 ** 20).toFixed(0)} -> ${(after / 2 ** 20).toFixed(0)} MiB, peak held ${peakHeld} bytes`);
  });

  it('closes a client that stops reading once the pongs waiting for it pass its budget, as too_slow, and gives every byte back', async () => {
    const gw = await res.gateway({ SESSION_BUFFER_BYTES: String(16 * 1024), SOCKET_HIGH_WATER_BYTES: '16384' });
    const deaf = await deafClient(gw.port);
    const ping = { type: 'ping', id: 'y'.repeat(250) };
    // The kernel's socket buffers take the first megabytes of pongs; the gateway's own holding comes after.
    for (let batch = 0; batch < 100 && !deaf.destroyed; batch++) {
      for (let i = 0; i < 1000; i++) deaf.send(ping);
      const t = await poll(
        () => gw.scrape(),
        (m) => metricValue(m, 'voicegw_client_messages_total', 'type="ping"') === (batch + 1) * 1000 || metricValue(m, 'voicegw_sessions_active') === 0,
      );
      if (metricValue(t, 'voicegw_sessions_active') === 0) break;
      expect(metricValue(t, 'voicegw_session_buffer_bytes')).toBeLessThanOrEqual(16 * 1024);
    }
    const text = await poll(
      () => gw.scrape(),
      (t) => metricValue(t, 'voicegw_sessions_active') === 0,
    );

    expect(metricValue(text, 'voicegw_sessions_total', 'outcome="too_slow"')).toBe(1);
    expect(metricValue(text, 'voicegw_buffer_overflows_total', 'buffer="client_queue"')).toBe(1);
    expect(metricValue(text, 'voicegw_session_buffer_bytes')).toBe(0);
    deaf.resume();
    await deaf.ended;
    expect(deaf.received.close).toEqual({ code: 4003, reason: 'client too slow' });
  });
});
