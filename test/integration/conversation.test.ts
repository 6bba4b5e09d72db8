// Whole conversations over real loopback sockets: a real gateway, a simulator of its own as the upstream
// (echo replies where audio has to go round trip), real ws clients, and the CLI client as a child process.
//
// Where each message type of the client protocol (PROTOCOL.md) is exercised:
//
// client → gateway
//   hello ................ every test; field by field in session.test.ts ("negotiates the values …")
//   listen start (manual)  here: "echoes a 16 kHz utterance …", "passes Opus uplink packets …"
//   listen start (auto) .. here: "in auto mode …"
//   listen start (barge-in) here: "on listen start while speaking …"
//   listen stop .......... here: "echoes a 16 kHz utterance …" and every other manual utterance
//   text ................. session.test.ts ("delivers a whole reply in order …"); here: abort, mcp, rates, CLI --text
//   abort ................ here: "on abort mid-reply …"; session.test.ts ("on abort mid-reply goes ready …")
//   mcp .................. here: "passes a client mcp payload upstream unchanged …", "relays an upstream mcp …"
//   ping ................. session.test.ts ("answers ping with a pong carrying the same id")
//   binary (opus) ........ here: "passes Opus uplink packets …", "answers an empty Opus frame …"
//   binary (pcm16) ....... here: "echoes a 16 kHz utterance …", "cuts pcm16 chunks …", "answers a pcm16 frame …"
//
// gateway → client
//   hello ................ session.test.ts (defaults, negotiation, opus rate); here: downlink opus, every pcm16 rate
//   state ready .......... every test (after hello, after a reply, after abort)
//   state listening ...... here: manual, auto and barge-in tests
//   state processing ..... here: after listen stop (manual), after user_text (auto); session.test.ts after text
//   state speaking ....... here and session.test.ts: every whole reply
//   state reconnecting ... upstream-failure.test.ts ("reconnects after the upstream closes a session …")
//   user_text ............ here: echo and auto tests; session.test.ts ("delivers a whole reply …")
//   assistant_text ....... here: echo replies; session.test.ts ("delivers a whole reply …", each before its sentence)
//   emotion .............. here: "in auto mode …" and the echo test; session.test.ts ("delivers a whole reply …")
//   audio_frame (json) ... session.test.ts ("sends json audio_frame messages numbered from 0 …")
//   binary (pcm16) ....... here: every echo test, "decodes to … every pcm16 rate"; session.test.ts
//   binary (opus) ........ here: "passes the echo's Opus packets through untouched … pcm16 uplink"; session.test.ts
//   mcp .................. here: "relays an upstream mcp request to the client unchanged …"
//   error ................ here: bad_audio (pcm16 odd, opus empty/oversized); bad-input.test.ts: bad_message,
//                          hello_required, overloaded; upstream-failure.test.ts: upstream_unavailable, upstream_lost
//   pong ................. session.test.ts ("answers ping …"), bad-input.test.ts
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import wavefile from 'wavefile';
import { afterEach, describe, expect, it } from 'vitest';
import type { SimulatorOptions } from '../../src/sim/simulator.ts';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import {
  chunks,
  encodeFrames,
  envelopeCorrelation,
  pcmBytes,
  readWav,
  samplesOf,
  UTTERANCE_PATH,
  type Pcm,
} from '../support/audio.ts';
import { decodeReference, expectedReplyShape, isError, isState, metricSum, metricValue, replyEnd, Resources, shapeOf, type Received, type TestClient } from '../support/gateway.ts';
import { fakeUpstream, SERVER_HELLO, sendJson } from '../support/fake-upstream.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const speech = loadSpeech();
/** The fixture cut to 8 frames a sentence: paced in real time, a reply takes about half a second. */
const shortSpeech: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 8) })) };
const utterance = readWav(UTTERANCE_PATH);
const utteranceBytes = pcmBytes(utterance.samples);
/** 60 ms frames at 16 kHz, the last one padded: what the gateway cuts the utterance into. */
const UTTERANCE_FRAMES = Math.ceil(utterance.samples.length / 960);
/** 37 ms of 16 kHz audio, in samples: chunks that never line up with the gateway's 60 ms frames. */
const CHUNK_37MS = 592;
const PCM16_UPLINK = { codec: 'pcm16', sampleRate: 16000, frameMs: 60 };
const LISTEN_MANUAL = { type: 'listen', state: 'start', mode: 'manual' };
const LISTEN_STOP = { type: 'listen', state: 'stop' };

const res = new Resources();
afterEach(() => res.dispose());

type Item = Received['order'][number];

/** A gateway in front of its own simulator: echo replies, burst pacing, short stop delay unless told otherwise. */
async function echoGateway(simOptions: SimulatorOptions = {}, env: Record<string, string> = {}) {
  const sim = await res.simulator({ reply: 'echo', ...simOptions });
  const gw = await res.gateway({ UPSTREAM_URL: sim.url, ...env });
  return { sim, gw };
}

/** Waits for the whole reply that follows `start` in the client's received order; returns order[start … its state ready]. */
async function wholeReply(client: TestClient, start: number): Promise<Item[]> {
  await client.until((r) => replyEnd(r.order, start) >= 0);
  return client.received.order.slice(start, replyEnd(client.received.order, start) + 1);
}

/** Speaks one manual utterance: listen start, the audio frames, listen stop; returns the whole reply from listen start on. */
async function utter(client: TestClient, frames: readonly Buffer[]): Promise<Item[]> {
  const start = client.received.order.length;
  client.send(LISTEN_MANUAL);
  for (const frame of frames) client.ws.send(frame);
  client.send(LISTEN_STOP);
  return wholeReply(client, start);
}

/** The binary audio frames of part of the received order, as they arrived. */
function audioOf(items: readonly Item[], client: TestClient, start: number): Buffer[] {
  // Binary frames are not in `order` by value: count the ones before `start` to find where these begin.
  const before = client.received.order.slice(0, start).filter((m) => m === 'audio').length;
  return client.received.binary.slice(before, before + items.filter((m) => m === 'audio').length);
}

/** What an echo reply to a manual utterance looks like to the client, from `state listening` on. */
function echoReplyShape(frames: number): string[] {
  return ['state listening', 'state processing', 'user_text', 'emotion', 'state speaking', 'assistant_text', ...Array<string>(frames).fill('audio'), 'state ready'];
}

/** The echo simulator's reply to an utterance of these packets, as its codec makes it: decoded at 24 kHz, re-encoded in 60 ms frames. */
function echoReference(uplink: readonly Buffer[]): Buffer[] {
  const pcm = Buffer.concat(decodeReference(uplink, 24000));
  return encodeFrames({ sampleRate: 24000, samples: samplesOf(pcm) });
}

async function metrics(gw: { scrape(): Promise<string> }): Promise<string> {
  return gw.scrape();
}

describe('a spoken conversation', () => {
  it('echoes a 16 kHz utterance sent as pcm16 in 37 ms chunks back as audio of the same length within a frame whose loudness follows the input (r > 0.8)', async () => {
    const { sim, gw } = await echoGateway();
    const client = await res.client(gw.url);
    await client.hello({ uplink: PCM16_UPLINK });
    const reply = await utter(client, chunks(utteranceBytes, [CHUNK_37MS]));

    expect(reply.map(shapeOf)).toEqual(echoReplyShape(UTTERANCE_FRAMES));
    expect(sim.sessions[0]!.received.audio).toHaveLength(UTTERANCE_FRAMES);
    const frames = client.received.binary;
    expect(frames.every((f) => f.length === 2880)).toBe(true);
    const output: Pcm = { sampleRate: 24000, samples: samplesOf(Buffer.concat(frames)) };
    const inputMs = (utterance.samples.length / utterance.sampleRate) * 1000;
    const outputMs = (output.samples.length / output.sampleRate) * 1000;
    const { r, lagMs } = envelopeCorrelation(utterance, output);
    console.log(`pcm16 uplink echo: input ${inputMs.toFixed(1)} ms, output ${outputMs.toFixed(1)} ms (${frames.length} frames), envelope r=${r.toFixed(4)} at lag ${lagMs} ms`);

    expect(Math.abs(outputMs - inputMs)).toBeLessThanOrEqual(60);
    expect(r).toBeGreaterThan(0.8);
  });

  it('cuts pcm16 chunks of any whole number of samples into 60 ms frames: the simulator receives exactly the packets a reference encoder makes', async () => {
    const { sim, gw } = await echoGateway();
    const client = await res.client(gw.url);
    await client.hello({ uplink: PCM16_UPLINK });
    // 1 sample, 37 ms, an odd count, exactly one frame, more than a frame and a half, 3 samples.
    const reply = await utter(client, chunks(utteranceBytes, [1, CHUNK_37MS, 591, 960, 1777, 3]));

    expect(reply.map(shapeOf)).toEqual(echoReplyShape(UTTERANCE_FRAMES));
    const reference = encodeFrames(utterance);
    const received = sim.sessions[0]!.received.audio;
    expect(received).toHaveLength(reference.length);
    received.forEach((p, i) => expect(p.equals(reference[i]!), `packet ${i}`).toBe(true));
    expect(metricValue(await metrics(gw), 'voicegw_uplink_frames_total')).toBe(UTTERANCE_FRAMES);
  });

  it('passes Opus uplink packets to the simulator byte for byte and in order, and counts them in uplink_frames_total', async () => {
    const { sim, gw } = await echoGateway();
    const client = await res.client(gw.url);
    await client.hello({ uplink: { codec: 'opus', sampleRate: 16000, frameMs: 60 } });
    const packets = encodeFrames(utterance);
    const reply = await utter(client, packets);

    expect(reply.map(shapeOf)).toEqual(echoReplyShape(packets.length));
    const received = sim.sessions[0]!.received.audio;
    expect(received).toHaveLength(packets.length);
    received.forEach((p, i) => expect(p.equals(packets[i]!), `packet ${i}`).toBe(true));
    expect(metricValue(await metrics(gw), 'voicegw_uplink_frames_total')).toBe(packets.length);
    const output: Pcm = { sampleRate: 24000, samples: samplesOf(Buffer.concat(client.received.binary)) };
    const { r, lagMs } = envelopeCorrelation(utterance, output);
    console.log(`opus uplink echo: ${packets.length} packets up, ${client.received.binary.length} frames down, envelope r=${r.toFixed(4)} at lag ${lagMs} ms`);
    expect(r).toBeGreaterThan(0.8);
  });

  it('in auto mode ends the utterance on the upstream\'s silence: user_text, state processing, emotion, state speaking, then the whole reply, with no listen stop', async () => {
    const { sim, gw } = await echoGateway({ echoSilenceMs: 250 });
    const client = await res.client(gw.url);
    await client.hello({ uplink: PCM16_UPLINK });
    const start = client.received.order.length;
    client.send({ type: 'listen', state: 'start', mode: 'auto' });
    for (const chunk of chunks(utteranceBytes, [CHUNK_37MS])) client.ws.send(chunk);
    const reply = await wholeReply(client, start);

    // Without listen stop the partial last frame is never sent: whole frames only.
    const frames = Math.floor(utterance.samples.length / 960);
    expect(reply.map(shapeOf)).toEqual([
      'state listening',
      'user_text',
      'state processing',
      'emotion',
      'state speaking',
      'assistant_text',
      ...Array<string>(frames).fill('audio'),
      'state ready',
    ]);
    expect(reply[1]).toEqual({ type: 'user_text', text: expect.stringMatching(/^echo: /) });
    expect(reply[3]).toEqual({ type: 'emotion', emotion: 'happy', emoji: '😊' });
    const simSession = sim.sessions[0]!;
    expect(simSession.received.json).toEqual([
      expect.objectContaining({ type: 'hello' }),
      { type: 'listen', state: 'start', mode: 'auto', session_id: simSession.id },
    ]);
    expect(simSession.received.audio).toHaveLength(frames);
  });

  it('starts each utterance with a fresh frame: what was left of the last auto-mode utterance does not leak into the next', async () => {
    const { sim, gw } = await echoGateway({ echoSilenceMs: 250 });
    const client = await res.client(gw.url);
    await client.hello({ uplink: PCM16_UPLINK });
    const start = client.received.order.length;
    client.send({ type: 'listen', state: 'start', mode: 'auto' });
    for (const chunk of chunks(utteranceBytes, [CHUNK_37MS])) client.ws.send(chunk);
    await wholeReply(client, start);
    const before = sim.sessions[0]!.received.audio.length;
    const five = utteranceBytes.subarray(0, 5 * 960 * 2);
    await utter(client, [five]);

    // Five whole frames make five packets; a leftover from before would shift them and add a sixth.
    // (Not compared byte for byte: the session's encoder carries its state from the first utterance.)
    expect(sim.sessions[0]!.received.audio.slice(before)).toHaveLength(5);
  });
});

describe('uplink errors', () => {
  it('answers a pcm16 frame of an odd byte count with bad_audio, drops it, and still echoes the utterance around it', async () => {
    const { sim, gw } = await echoGateway();
    const client = await res.client(gw.url);
    await client.hello({ uplink: PCM16_UPLINK });
    const start = client.received.order.length;
    const parts = chunks(utteranceBytes, [CHUNK_37MS]);
    const half = parts.length >> 1;
    client.send(LISTEN_MANUAL);
    for (const chunk of parts.slice(0, half)) client.ws.send(chunk);
    client.ws.send(Buffer.from([1, 2, 3]));
    const error = await client.next(isError('bad_audio'));
    for (const chunk of parts.slice(half)) client.ws.send(chunk);
    client.send(LISTEN_STOP);
    const reply = await wholeReply(client, start);

    expect(error).toEqual({ type: 'error', code: 'bad_audio', message: expect.stringContaining('odd') });
    expect(reply.map(shapeOf)).toEqual(['state listening', 'error', ...echoReplyShape(UTTERANCE_FRAMES).slice(1)]);
    // The odd frame left the gateway's framing alone: upstream got the same packets as without it.
    const reference = encodeFrames(utterance);
    sim.sessions[0]!.received.audio.forEach((p, i) => expect(p.equals(reference[i]!), `packet ${i}`).toBe(true));
    expect(sim.sessions[0]!.received.audio).toHaveLength(reference.length);

    // And the session goes on: a later utterance echoes whole.
    const again = await utter(client, chunks(utteranceBytes, [CHUNK_37MS]));
    expect(again.map(shapeOf)).toEqual(echoReplyShape(UTTERANCE_FRAMES));
  });

  it('answers an empty Opus frame and one over 3825 bytes with bad_audio, forwards one of exactly 3825, and still echoes', async () => {
    const { sim, gw } = await echoGateway();
    const client = await res.client(gw.url);
    await client.hello();
    const packets = encodeFrames(utterance);
    // A readable TOC (SILK wideband 60 ms, one frame) in front of filler: only the size is wrong.
    const sized = (n: number) => Buffer.concat([Buffer.from([0x58]), Buffer.alloc(n - 1, 0x55)]);
    const start = client.received.order.length;
    client.send(LISTEN_MANUAL);
    client.ws.send(Buffer.alloc(0));
    await client.next(isError('bad_audio'));
    client.ws.send(sized(3826));
    await client.until((r) => r.json.filter(isError('bad_audio')).length === 2);
    client.ws.send(sized(3825));
    for (const p of packets) client.ws.send(p);
    client.send(LISTEN_STOP);
    const reply = await wholeReply(client, start);

    const errors = client.received.json.filter((m) => m.type === 'error');
    expect(errors).toEqual([
      { type: 'error', code: 'bad_audio', message: expect.stringContaining('0 bytes') },
      { type: 'error', code: 'bad_audio', message: expect.stringContaining('3826 bytes') },
    ]);
    // The simulator cannot decode the 3825-byte filler and skips it, as a server would: the echo is the real packets'.
    expect(reply.map(shapeOf)).toEqual(['state listening', 'error', 'error', ...echoReplyShape(packets.length).slice(1)]);
    const received = sim.sessions[0]!.received.audio;
    expect(received).toHaveLength(packets.length + 1);
    expect(received[0]!.equals(sized(3825))).toBe(true);
    packets.forEach((p, i) => expect(received[i + 1]!.equals(p), `packet ${i}`).toBe(true));
    expect(metricValue(await metrics(gw), 'voicegw_uplink_frames_total')).toBe(packets.length + 1);
  });
});

describe('abort and barge-in', () => {
  it('on abort mid-reply sends state ready, then no audio of that reply; the simulator gets the abort; every frame is pushed or dropped as aborted', async () => {
    // Upstream paced like xiaozhi-esp32-server (the reply is in flight), client pacing realtime (the gateway holds frames).
    const { sim, gw } = await echoGateway({ reply: 'speech', speech: shortSpeech, pacing: 'xiaozhi' });
    const client = await res.client(gw.url);
    await client.hello({ pacing: { mode: 'realtime', prebufferMs: 240 } });
    client.send({ type: 'text', text: 'Tell me a story' });
    await client.until((r) => r.binary.length > 0);
    const abortAt = client.received.order.length;
    client.send({ type: 'abort' });
    await client.next(isState('ready'), client.received.json.length);
    const readyAt = client.received.order.findIndex((m, i) => i >= abortAt && m !== 'audio' && m.type === 'state' && m.state === 'ready');
    const abortedReplyFrames = client.received.binary.length;
    const next = await client.textReply('Another one');
    const nextAt = client.received.order.length - next.length;

    // Nothing between the abort's state ready and the next reply: no audio of the aborted one.
    expect(client.received.order.slice(readyAt + 1, nextAt)).toEqual([]);
    expect(client.received.order.slice(abortAt, readyAt).every((m) => m === 'audio')).toBe(true);
    expect(abortedReplyFrames).toBeLessThan(sim.replyFrames());
    expect(next.filter((m) => shapeOf(m) === 'audio')).toHaveLength(sim.replyFrames());
    const simSession = sim.sessions[0]!;
    expect(simSession.received.json.map((m) => m.type)).toEqual(['hello', 'listen', 'abort', 'listen']);
    expect(simSession.received.json[2]).toEqual({ type: 'abort', reason: expect.any(String), session_id: simSession.id });

    // The next reply came after the simulator handled the abort, so every frame of the aborted one has arrived.
    const text = await metrics(gw);
    const upstream = metricValue(text, 'voicegw_upstream_frames_total');
    const pushed = metricValue(text, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"');
    const dropped = metricValue(text, 'voicegw_frames_dropped_total', 'reason="aborted"');
    const failed = metricSum(text, 'voicegw_send_failures_total');
    console.log(`abort: upstream ${upstream} frames, pushed ${pushed}, dropped (aborted) ${dropped}, failed ${failed}`);
    expect(pushed).toBe(client.received.binary.length);
    expect(dropped).toBeGreaterThan(0);
    expect(failed).toBe(0);
    expect(dropped).toBe(upstream - pushed);
    expect(metricSum(text, 'voicegw_frames_dropped_total')).toBe(dropped);
  });

  it('on listen start while speaking aborts the reply upstream before the listen start, goes listening with no stale state ready, and echoes the new utterance whole', async () => {
    // Typed text to an echo session that heard nothing is answered with speech: a reply paced in real time.
    const { sim, gw } = await echoGateway({ speech: shortSpeech, pacing: 'xiaozhi' });
    const client = await res.client(gw.url);
    await client.hello({ uplink: PCM16_UPLINK });
    client.send({ type: 'text', text: 'Tell me a story' });
    await client.until((r) => r.binary.length > 0);
    const bargeAt = client.received.order.length;
    client.send(LISTEN_MANUAL);
    await client.next(isState('listening'));
    const listeningAt = client.received.order.findIndex((m, i) => i >= bargeAt && m !== 'audio' && m.type === 'state' && m.state === 'listening');
    // About a second of speech: 16 frames.
    const short = utteranceBytes.subarray(0, 16 * 960 * 2);
    for (const chunk of chunks(short, [CHUNK_37MS])) client.ws.send(chunk);
    client.send(LISTEN_STOP);
    await client.until((r) => replyEnd(r.order, listeningAt) >= 0);
    const after = client.received.order.slice(listeningAt);

    // From state listening on: the new utterance's reply alone, whole, and nothing of the aborted one.
    expect(after.map(shapeOf)).toEqual(echoReplyShape(16));
    expect(client.received.order.slice(bargeAt, listeningAt).every((m) => m === 'audio')).toBe(true);
    const simSession = sim.sessions[0]!;
    expect(simSession.received.json.map((m) => `${String(m.type)} ${String(m.state ?? '')}`.trim())).toEqual([
      'hello',
      'listen detect',
      'abort',
      'listen start',
      'listen stop',
    ]);
    expect(simSession.received.json[3]).toEqual({ type: 'listen', state: 'start', mode: 'manual', session_id: simSession.id });
    expect(simSession.received.audio).toHaveLength(16);
    expect(simSession.repliesSent).toBe(2);
    const aborted = metricValue(await metrics(gw), 'voicegw_frames_dropped_total', 'reason="aborted"');
    const upstream = metricValue(await metrics(gw), 'voicegw_upstream_frames_total');
    expect(client.received.binary.length + aborted).toBe(upstream);
  });
});

describe('typing over a reply', () => {
  it('aborts the reply upstream before the new text, and goes straight from processing to the new reply with no stale state ready or audio', async () => {
    const { sim, gw } = await echoGateway({ speech: shortSpeech, pacing: 'xiaozhi' });
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'text', text: 'Tell me a story' });
    await client.until((r) => r.binary.length > 0);
    const interruptAt = client.received.order.length;
    client.send({ type: 'text', text: 'Actually, a joke' });
    await client.next(isState('processing'), client.received.json.length);
    const processingAt = client.received.order.findIndex((m, i) => i >= interruptAt && m !== 'audio' && m.type === 'state' && m.state === 'processing');
    await client.until((r) => replyEnd(r.order, processingAt) >= 0);
    const after = client.received.order.slice(processingAt, replyEnd(client.received.order, processingAt) + 1);

    expect(after.map(shapeOf)).toEqual(['state processing', ...expectedReplyShape(shortSpeech.sentences).slice(1)]);
    expect(sim.sessions[0]!.received.json.map((m) => `${String(m.type)} ${String(m.state ?? '')}`.trim())).toEqual([
      'hello',
      'listen detect',
      'abort',
      'listen detect',
    ]);
  });
});

describe('mcp', () => {
  const payload = {
    jsonrpc: '2.0',
    id: 7,
    result: { tools: [{ name: 'self.audio_speaker.set_volume', inputSchema: { type: 'object', properties: { volume: { type: 'integer', minimum: 0, maximum: 100 } } } }], note: 'ünïcödé ✓', empty: null, n: 1.5e-7 },
  };

  it('passes a client mcp payload upstream unchanged, with the session_id of the upstream session', async () => {
    const { sim, gw } = await echoGateway({ reply: 'speech' });
    const client = await res.client(gw.url);
    await client.hello();
    client.send({ type: 'mcp', payload });
    // The reply to a later text proves the simulator has read everything sent before it.
    await client.textReply('Done?');

    const simSession = sim.sessions[0]!;
    expect(simSession.received.json.map((m) => m.type)).toEqual(['hello', 'mcp', 'listen']);
    expect(simSession.received.json[1]).toEqual({ type: 'mcp', payload, session_id: simSession.id });
    expect(client.received.json.filter((m) => m.type === 'error')).toEqual([]);
  });

  it('relays an upstream mcp request to the client unchanged, as {"type":"mcp","payload":…}', async () => {
    const request = { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'self.audio_speaker.set_volume', arguments: { volume: 42 } } };
    const seen: Record<string, unknown>[] = [];
    const url = await fakeUpstream(res, (ws, m) => {
      seen.push(m);
      if (m.type === 'hello') sendJson(ws, { ...SERVER_HELLO, session_id: 'up-1' });
      // As a server does after the device's initialize result: a tools/call request.
      else if (m.type === 'mcp') sendJson(ws, { type: 'mcp', session_id: 'up-1', payload: request });
    });
    const gw = await res.gateway({ UPSTREAM_URL: url });
    const client = await res.client(gw.url);
    await client.hello();
    const after = client.received.json.length;
    client.send({ type: 'mcp', payload });
    const relayed = await client.next((m) => m.type === 'mcp', after);

    expect(relayed).toEqual({ type: 'mcp', payload: request });
    expect(client.received.json.slice(after)).toEqual([relayed]);
    expect(seen[1]).toEqual({ type: 'mcp', payload, session_id: 'up-1' });
  });
});

describe('downlink formats', () => {
  it("passes the echo's Opus packets through untouched on an opus downlink with a pcm16 uplink", async () => {
    const { sim, gw } = await echoGateway();
    const client = await res.client(gw.url);
    const hello = await client.hello({ downlink: { codec: 'opus' }, uplink: PCM16_UPLINK });
    const reply = await utter(client, chunks(utteranceBytes, [CHUNK_37MS]));

    expect(hello.downlink).toEqual({ codec: 'opus', sampleRate: 24000, transport: 'binary' });
    expect(hello.uplink).toEqual(PCM16_UPLINK);
    expect(reply.map(shapeOf)).toEqual(echoReplyShape(UTTERANCE_FRAMES));
    // The simulator's echo, rebuilt from what it received: its packets reached the client byte for byte.
    const reference = echoReference(sim.sessions[0]!.received.audio);
    const frames = client.received.binary;
    expect(frames).toHaveLength(reference.length);
    frames.forEach((f, i) => expect(f.equals(reference[i]!), `frame ${i}`).toBe(true));
    const text = await metrics(gw);
    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="opus",transport="binary"')).toBe(UTTERANCE_FRAMES);
  });

  it.each([8000, 12000, 16000, 24000, 48000])('decodes a reply to pcm16 at %i Hz: 60 ms frames of rate·0.06·2 bytes, equal to a reference decode', async (rate) => {
    const { sim, gw } = await echoGateway({ reply: 'speech' });
    const client = await res.client(gw.url);
    const hello = await client.hello({ downlink: { codec: 'pcm16', sampleRate: rate } });
    const reply = await client.textReply('Hi');

    expect(hello.downlink).toEqual({ codec: 'pcm16', sampleRate: rate, transport: 'binary' });
    const frames = audioOf(reply, client, client.received.order.length - reply.length);
    expect(frames).toHaveLength(sim.replyFrames());
    expect(frames.every((f) => f.length === rate * 0.06 * 2)).toBe(true);
    const reference = decodeReference(
      speech.sentences.flatMap((s) => s.packets),
      rate,
    );
    frames.forEach((f, i) => expect(f.equals(reference[i]!), `frame ${i}`).toBe(true));
  });
});

describe('the CLI client', () => {
  /** Runs the CLI against the gateway; killed if it has not exited within `killAfterMs`. */
  function runCli(args: string[], killAfterMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/cli/client.ts', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const kill = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    res.add(() => {
      clearTimeout(kill);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => {
        clearTimeout(kill);
        resolve({ code, signal, stdout, stderr });
      });
    });
  }

  function tmpWav(): string {
    const dir = mkdtempSync(join(tmpdir(), 'voicegw-cli-'));
    res.add(() => rmSync(dir, { recursive: true, force: true }));
    return join(dir, 'reply.wav');
  }

  /** The figures the CLI printed, checked against the WAV it wrote. */
  function checkRun(run: { code: number | null; stdout: string; stderr: string }, out: string, expectedFrames: number, label: string) {
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const frames = Number(/^frames\s+(\d+)$/m.exec(run.stdout)?.[1]);
    const seconds = Number(/^audio\s+(\d+\.\d\d) s$/m.exec(run.stdout)?.[1]);
    const wav = new wavefile.WaveFile(readFileSync(out));
    const fmt = wav.fmt as { numChannels: number; sampleRate: number; bitsPerSample: number };
    const samples = (wav.getSamples(false, Int16Array) as unknown as Int16Array).length;
    const wavSeconds = samples / fmt.sampleRate;
    console.log(`CLI ${label}: exit ${run.code}, printed frames ${frames}, audio ${seconds.toFixed(2)} s; wrote ${samples} samples at ${fmt.sampleRate} Hz = ${wavSeconds.toFixed(3)} s`);
    expect(frames).toBe(expectedFrames);
    expect({ channels: fmt.numChannels, rate: fmt.sampleRate, bits: fmt.bitsPerSample }).toEqual({ channels: 1, rate: 24000, bits: 16 });
    expect(Math.abs(wavSeconds - seconds)).toBeLessThanOrEqual(0.005);
    expect(samples).toBe(frames * 1440);
    expect(run.stdout).toContain(`wrote           ${out}`);
  }

  it('sends a WAV as pcm16 in real time, exits 0 and writes a WAV as long as the printed audio seconds', async () => {
    const { gw } = await echoGateway();
    const out = tmpWav();
    const run = await runCli(['--url', gw.url, '--wav', UTTERANCE_PATH, '--out', out, '--timeout', '15']);

    checkRun(run, out, UTTERANCE_FRAMES, 'pcm16 uplink');
    expect(run.stdout).toMatch(/^user_text\s+echo: /m);
  }, 30_000);

  it('sends a WAV as Opus with --uplink opus, exits 0 and writes a WAV as long as the printed audio seconds', async () => {
    const { sim, gw } = await echoGateway();
    const out = tmpWav();
    const run = await runCli(['--url', gw.url, '--wav', UTTERANCE_PATH, '--uplink', 'opus', '--out', out, '--timeout', '15']);

    checkRun(run, out, UTTERANCE_FRAMES, 'opus uplink');
    // The CLI's packets are a fresh 24 kbit/s encoder's 60 ms frames: what arrived upstream, untouched.
    const reference = encodeFrames(utterance);
    const received = sim.sessions[0]!.received.audio;
    expect(received).toHaveLength(reference.length);
    received.forEach((p, i) => expect(p.equals(reference[i]!), `packet ${i}`).toBe(true));
  }, 30_000);

  it('sends --text, exits 0 and writes the whole spoken reply', async () => {
    const { sim, gw } = await echoGateway();
    const out = tmpWav();
    const run = await runCli(['--url', gw.url, '--text', 'Hello there', '--out', out, '--timeout', '15']);

    checkRun(run, out, sim.replyFrames(), 'text');
    expect(run.stdout).toMatch(/^user_text\s+Hello there$/m);
    for (const s of speech.sentences) expect(run.stdout).toContain(s.text);
  }, 30_000);
});
