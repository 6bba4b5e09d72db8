import { afterEach, describe, expect, it } from 'vitest';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import {
  decodeReference,
  expectedReplyShape,
  isError,
  isState,
  metricValue,
  Resources,
  shapeOf,
  type TestClient,
} from '../support/gateway.ts';
import { fakeUpstream, SERVER_HELLO, sendJson } from '../support/fake-upstream.ts';

const speech = loadSpeech();
const packets = speech.sentences.flatMap((s) => s.packets);
/** The fixture cut to 8 frames a sentence: paced in real time, a reply takes about half a second. */
const shortSpeech: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 8) })) };
/** 60 ms of 16-bit mono PCM at 24 kHz. */
const FRAME_BYTES_24K = 2880;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

const DEFAULT_HELLO = {
  downlink: { codec: 'pcm16', sampleRate: 24000, transport: 'binary' },
  uplink: { codec: 'opus', sampleRate: 16000, frameMs: 60 },
  pacing: { mode: 'none', prebufferMs: 0 },
};

const res = new Resources();
afterEach(() => res.dispose());

/** A gateway in front of its own simulator (burst pacing, short stop delay unless told otherwise). */
async function gatewayWithSimulator(simOptions: Parameters<Resources['simulator']>[0] = {}, env: Record<string, string> = {}) {
  const sim = await res.simulator(simOptions);
  const gw = await res.gateway({ UPSTREAM_URL: sim.url, ...env });
  return { sim, gw };
}

const audioIn = (items: (Record<string, any> | 'audio')[]) => items.filter((m) => shapeOf(m) === 'audio');

describe('session', () => {
  it('answers a hello without fields with the documented defaults and a session id, then state ready', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    client.send({ type: 'hello' });
    await client.next(isState('ready'));

    expect(client.received.order).toEqual([
      { type: 'hello', version: 1, sessionId: expect.any(String), ...DEFAULT_HELLO },
      { type: 'state', state: 'ready' },
    ]);
    expect(client.received.json[0]!.sessionId).not.toBe('');
  });

  it('negotiates the values a hello chooses: pcm16 at 16 kHz over json', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    const hello = await client.hello({ version: 1, downlink: { codec: 'pcm16', sampleRate: 16000, transport: 'json' } });

    expect(hello).toEqual({
      type: 'hello',
      version: 1,
      sessionId: expect.any(String),
      downlink: { codec: 'pcm16', sampleRate: 16000, transport: 'json' },
      uplink: DEFAULT_HELLO.uplink,
      pacing: DEFAULT_HELLO.pacing,
    });
  });

  it("reports the upstream's 24 kHz for an opus downlink whatever rate the hello asked for", async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    const hello = await client.hello({ downlink: { codec: 'opus', sampleRate: 48000 }, uplink: { frameMs: 20 }, pacing: { mode: 'realtime', prebufferMs: 120 } });

    expect(hello.downlink).toEqual({ codec: 'opus', sampleRate: 24000, transport: 'binary' });
    expect(hello.uplink).toEqual({ codec: 'opus', sampleRate: 16000, frameMs: 20 });
    expect(hello.pacing).toEqual({ mode: 'realtime', prebufferMs: 120 });
  });

  it('answers a hello with a bad value with bad_message and still accepts a correct hello afterwards', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    client.send({ type: 'hello', downlink: { sampleRate: 44100 } });
    await client.next(isError('bad_message'));
    const hello = await client.hello();

    expect(hello.downlink).toEqual(DEFAULT_HELLO.downlink);
    expect(client.received.json.map((m) => m.type)).toEqual(['error', 'hello', 'state']);
    expect(gw.simulator!.sessions).toHaveLength(1);
  });

  it('delivers a whole reply in order: state, texts, then every frame as decoded PCM, each sentence after its assistant_text', async () => {
    const { sim, gw } = await gatewayWithSimulator();
    const client = await res.client(gw.url);
    await client.hello();
    const reply = await client.textReply('How are you?');

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(reply[1]).toEqual({ type: 'user_text', text: 'How are you?' });
    expect(reply[2]).toEqual({ type: 'emotion', emotion: 'happy', emoji: '😊' });
    expect(reply.filter((m) => m !== 'audio' && m.type === 'assistant_text').map((m) => (m as Record<string, any>).text)).toEqual(
      speech.sentences.map((s) => s.text),
    );
    const frames = client.received.binary;
    expect(frames).toHaveLength(sim.replyFrames());
    expect(frames.every((f) => f.length === FRAME_BYTES_24K)).toBe(true);
    const reference = decodeReference(packets);
    frames.forEach((frame, i) => expect(frame.equals(reference[i]!), `frame ${i}`).toBe(true));
  });

  it('sends json audio_frame messages numbered from 0 whose data decodes to the same PCM', async () => {
    const { sim, gw } = await gatewayWithSimulator();
    const client = await res.client(gw.url);
    await client.hello({ downlink: { transport: 'json' } });
    const reply = await client.textReply('Hi');

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(0);
    const audio = audioIn(reply) as Record<string, any>[];
    expect(audio).toHaveLength(sim.replyFrames());
    expect(audio.map((m) => m.seq)).toEqual(audio.map((_, i) => i));
    const reference = decodeReference(packets);
    audio.forEach((m, i) => expect(Buffer.from(m.data as string, 'base64').equals(reference[i]!), `frame ${i}`).toBe(true));
  });

  it("passes the upstream's Opus packets through byte for byte on an opus downlink", async () => {
    const { sim, gw } = await gatewayWithSimulator();
    const client = await res.client(gw.url);
    await client.hello({ downlink: { codec: 'opus' } });
    const reply = await client.textReply('Hi');

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(client.received.binary).toHaveLength(sim.replyFrames());
    client.received.binary.forEach((frame, i) => expect(frame.equals(packets[i]!), `frame ${i}`).toBe(true));
  });

  it('decodes straight to the rate the client asked for: 60 ms frames of 16 kHz PCM', async () => {
    const { sim, gw } = await gatewayWithSimulator();
    const client = await res.client(gw.url);
    await client.hello({ downlink: { sampleRate: 16000 } });
    await client.textReply('Hi');

    expect(client.received.binary).toHaveLength(sim.replyFrames());
    const reference = decodeReference(packets, 16000);
    client.received.binary.forEach((frame, i) => expect(frame.equals(reference[i]!), `frame ${i}`).toBe(true));
    expect(client.received.binary[0]).toHaveLength(1920);
  });

  it('answers ping with a pong carrying the same id', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'ping', id: 'p-1' });
    client.send({ type: 'ping', id: { n: 2, tag: ['x'] } });
    await client.next((m) => m.type === 'pong' && typeof m.id === 'object');

    expect(client.received.json.filter((m) => m.type === 'pong')).toEqual([
      { type: 'pong', id: 'p-1' },
      { type: 'pong', id: { n: 2, tag: ['x'] } },
    ]);
  });

  it('keeps two concurrent sessions independent: each gets its own whole reply', async () => {
    const { sim, gw } = await gatewayWithSimulator();
    const [a, b] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    const [helloA, helloB] = await Promise.all([a.hello(), b.hello()]);
    const [replyA, replyB] = await Promise.all([a.textReply('one'), b.textReply('two')]);

    expect(helloA.sessionId).not.toBe(helloB.sessionId);
    expect(replyA.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(replyB.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    expect(replyA[1]).toEqual({ type: 'user_text', text: 'one' });
    expect(replyB[1]).toEqual({ type: 'user_text', text: 'two' });
    // Each session decodes with its own decoder: both streams equal a fresh decode of the packets.
    const reference = decodeReference(packets);
    for (const client of [a, b]) {
      expect(client.received.binary).toHaveLength(sim.replyFrames());
      client.received.binary.forEach((frame, i) => expect(frame.equals(reference[i]!), `frame ${i}`).toBe(true));
    }
  });

  it('shows the upstream a distinct lower-case MAC Device-Id per session and Protocol-Version 1', async () => {
    const gw = await res.gateway();
    const [a, b] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await Promise.all([a.hello(), b.hello()]);

    const sessions = gw.simulator!.sessions;
    expect(sessions).toHaveLength(2);
    const ids = sessions.map((s) => s.headers['device-id']);
    for (const id of ids) expect(id).toMatch(MAC);
    expect(ids[0]).not.toBe(ids[1]);
    expect(sessions.map((s) => s.headers['protocol-version'])).toEqual(['1', '1']);
    expect(sessions.map((s) => s.protocolVersion)).toEqual([1, 1]);
  });

  it('shows the upstream the configured UPSTREAM_DEVICE_ID, lower-cased, for every session', async () => {
    const gw = await res.gateway({ UPSTREAM_DEVICE_ID: 'AA:BB:CC:0D:0E:0F' });
    const [a, b] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await Promise.all([a.hello(), b.hello()]);

    expect(gw.simulator!.sessions.map((s) => s.headers['device-id'])).toEqual(['aa:bb:cc:0d:0e:0f', 'aa:bb:cc:0d:0e:0f']);
  });

  it('turns a corrupt upstream packet into exactly one concealment frame of the same size and counts one decode error', async () => {
    const { sim, gw } = await gatewayWithSimulator({ corruptFrames: [3] });
    const client = await res.client(gw.url);
    await client.hello();
    const before = metricValue(await gw.scrape(), 'voicegw_decode_errors_total');
    const reply = await client.textReply('Hi');
    const after = await gw.scrape();

    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(speech.sentences));
    const frames = client.received.binary;
    expect(frames).toHaveLength(sim.replyFrames());
    expect(frames.every((f) => f.length === FRAME_BYTES_24K)).toBe(true);
    const reference = decodeReference(packets);
    for (let i = 0; i < 3; i++) expect(frames[i]!.equals(reference[i]!), `frame ${i}`).toBe(true);
    expect(frames[3]!.equals(reference[3]!)).toBe(false);
    expect(metricValue(after, 'voicegw_decode_errors_total') - before).toBe(1);
    expect(metricValue(after, 'voicegw_concealed_frames_total')).toBe(1);
    expect(metricValue(after, 'voicegw_upstream_frames_total')).toBe(sim.replyFrames());
  });

  it('on abort mid-reply goes ready, lets no frame of that reply through after it, and answers the next text whole', async () => {
    const { sim, gw } = await gatewayWithSimulator({ speech: shortSpeech, pacing: 'xiaozhi' });
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'text', text: 'Tell me a story' });
    await client.until((r) => r.binary.length > 0);
    const abortAt = client.received.order.length;
    client.send({ type: 'abort' });
    await client.next(isState('ready'), client.received.json.length);
    const readyAt = client.received.order.findIndex((m, i) => i >= abortAt && m !== 'audio' && m.type === 'state' && m.state === 'ready');
    const abortedFrames = client.received.binary.length;
    expect(abortedFrames).toBeLessThan(sim.replyFrames());

    const reply = await client.textReply('Another one');
    const replyStart = client.received.order.length - reply.length;
    // Between the abort's state ready and the new reply nothing arrived: no leftover audio.
    expect(client.received.order.slice(readyAt + 1, replyStart)).toEqual([]);
    expect(reply.map(shapeOf)).toEqual(expectedReplyShape(shortSpeech.sentences));
    expect(audioIn(reply)).toHaveLength(sim.replyFrames());
    expect(client.received.binary.slice(abortedFrames).every((f) => f.length === FRAME_BYTES_24K)).toBe(true);
    expect(sim.sessions[0]!.received.json.map((m) => m.type)).toEqual(['hello', 'listen', 'abort', 'listen']);
  });

  it('discards the audio an upstream still sends after an abort, until its tts stop', async () => {
    // An upstream with audio already in flight: on abort it sends three more frames of the old reply, then tts stop.
    const sentence = speech.sentences[0]!;
    const url = await fakeUpstream(res, (ws, m) => {
      if (m.type === 'hello') sendJson(ws, SERVER_HELLO);
      else if (m.type === 'listen' && m.state === 'detect') {
        sendJson(ws, { type: 'stt', text: String(m.text) });
        sendJson(ws, { type: 'tts', state: 'start' });
        sendJson(ws, { type: 'tts', state: 'sentence_start', text: sentence.text });
        for (const p of sentence.packets.slice(0, 5)) ws.send(p);
        // The first reply is held open until the abort; later ones end at once.
        if (m.text !== 'Go') sendJson(ws, { type: 'tts', state: 'stop' });
      } else if (m.type === 'abort') {
        for (const p of sentence.packets.slice(5, 8)) ws.send(p);
        sendJson(ws, { type: 'tts', state: 'sentence_start', text: 'leaked sentence' });
        sendJson(ws, { type: 'tts', state: 'stop' });
      }
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client: TestClient = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'text', text: 'Go' });
    await client.until((r) => r.binary.length === 5);
    client.send({ type: 'abort' });
    await client.next(isState('ready'), client.received.json.length);
    const readyAt = client.received.order.length;
    const reply = await client.textReply('Again');

    expect(client.received.order.length - reply.length).toBe(readyAt);
    expect(reply.map(shapeOf)).toEqual(['state processing', 'user_text', 'state speaking', 'assistant_text', ...Array<string>(5).fill('audio'), 'state ready']);
    expect(client.received.json.some((m) => m.type === 'assistant_text' && m.text === 'leaked sentence')).toBe(false);
    expect(client.received.binary).toHaveLength(10);
    expect(metricValue(await gw.scrape(), 'voicegw_frames_dropped_total', 'reason="aborted"')).toBe(3);
  });
});
