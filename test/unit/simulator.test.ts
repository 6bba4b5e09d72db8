import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import opus from '@discordjs/opus';
import wavefile from 'wavefile';
import { WebSocket, type ClientOptions } from 'ws';
import { decodeBinary, encodeBinary } from '../../src/protocol/xiaozhi.ts';
import { loadSpeech, type Speech } from '../../src/sim/speech.ts';
import {
  CORRUPT_PACKET,
  GARBAGE_PACKET,
  startSimulator,
  type Fault,
  type Simulator,
  type SimulatorOptions,
} from '../../src/sim/simulator.ts';

type Json = Record<string, unknown>;
/** `text`: a text message that is not JSON. */
type Event = { json: Json } | { audio: Buffer } | { text: string };

/** A device that records everything the simulator sends, in order, and lets a test wait for any of it. */
class Device {
  readonly events: Event[] = [];
  /** The close code, once the connection is gone. */
  readonly closed: Promise<number>;
  private waiters: { test: () => boolean; resolve: () => void }[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      this.events.push(isBinary ? { audio: data as Buffer } : textEvent(data.toString()));
      this.waiters = this.waiters.filter((w) => !(w.test() && (w.resolve(), true)));
    });
    this.closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  }

  static connect(url: string, headers: Record<string, string> = {}, options: ClientOptions = {}): Promise<Device> {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false, ...options });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new Device(ws)));
      ws.once('error', reject);
    });
  }

  send(message: Json): void {
    this.ws.send(JSON.stringify(message));
  }

  /** Sends uplink audio: one Opus packet a binary message (protocol version 1). */
  speak(packets: Buffer[]): void {
    for (const p of packets) this.ws.send(p);
  }

  hello(): void {
    this.send({ type: 'hello', version: 1, features: { mcp: true }, transport: 'websocket', audio_params: { format: 'opus', sample_rate: 16000, channels: 1, frame_duration: 60 } });
  }

  /** Resolves once the events seen so far satisfy `test`. */
  until(test: (events: Event[]) => boolean): Promise<void> {
    if (test(this.events)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ test: () => test(this.events), resolve }));
  }

  untilJson(type: string, state?: string, count = 1): Promise<void> {
    return this.until((events) => events.filter((e) => isJson(e, type, state)).length >= count);
  }
}

function textEvent(text: string): Event {
  try {
    return { json: JSON.parse(text) as Json };
  } catch {
    return { text };
  }
}

const isJson = (e: Event, type: string, state?: string): e is { json: Json } =>
  'json' in e && e.json.type === type && (state === undefined || e.json.state === state);
const audioOf = (events: Event[]): Buffer[] => events.flatMap((e) => ('audio' in e ? [e.audio] : []));
const shape = (events: Event[]): string[] =>
  events.map((e) => ('audio' in e ? 'audio' : 'text' in e ? 'text' : [e.json.type, e.json.state].filter(Boolean).join(' ')));

/** The expected shape of one whole reply, from `stt` to `tts stop`. */
function replyShape(speech: Speech): string[] {
  return ['stt', 'llm', 'tts start', ...speech.sentences.flatMap((s) => ['tts sentence_start', ...s.packets.map(() => 'audio')]), 'tts stop'];
}

const speech = loadSpeech();
/** The fixture cut to 8 frames a sentence: real-time pacing of it takes about 0.4 s. */
const shortSpeech: Speech = { ...speech, sentences: speech.sentences.map((s) => ({ text: s.text, packets: s.packets.slice(0, 8) })) };

/** The utterance fixture: 16 kHz mono s16 samples. */
const utterance = new wavefile.WaveFile(readFileSync(new URL('../fixtures/utterance-16k.wav', import.meta.url))).getSamples(
  false,
  Int16Array,
) as unknown as Int16Array;

/** The utterance's first `count` frames of `frameMs`, encoded as a device sends them: 16 kHz Opus. */
function uplink(count: number, frameMs = 60): Buffer[] {
  const encoder = new opus.OpusEncoder(16000, 1);
  const frameBytes = 16 * frameMs * 2;
  const pcm = Buffer.from(utterance.buffer, utterance.byteOffset, utterance.byteLength);
  return Array.from({ length: count }, (_, i) => encoder.encode(pcm.subarray(i * frameBytes, (i + 1) * frameBytes)));
}

/** The expected shape of an echo reply of `frames` frames (none: no sentence at all). */
function echoShape(frames: number): string[] {
  return ['stt', 'llm', 'tts start', ...(frames > 0 ? ['tts sentence_start', ...Array<string>(frames).fill('audio')] : []), 'tts stop'];
}
const textsOf = (events: Event[]): unknown[] =>
  events.filter((e) => isJson(e, 'stt') || isJson(e, 'tts', 'sentence_start')).map((e) => 'json' in e && e.json.text);

/** Loudness every 20 ms (RMS), so that audio at different rates and codec delays can be compared. */
function envelope(samples: Int16Array, rate: number): number[] {
  const window = rate / 50;
  return Array.from({ length: Math.floor(samples.length / window) }, (_, w) => {
    let sum = 0;
    for (let i = w * window; i < (w + 1) * window; i++) sum += samples[i]! ** 2;
    return Math.sqrt(sum / window);
  });
}

function correlation(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  const mean = (x: number[]): number => x.slice(0, n).reduce((s, v) => s + v, 0) / n;
  const [ma, mb] = [mean(a), mean(b)];
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < n; i++) {
    ab += (a[i]! - ma) * (b[i]! - mb);
    aa += (a[i]! - ma) ** 2;
    bb += (b[i]! - mb) ** 2;
  }
  return ab / Math.sqrt(aa * bb);
}

const sims: Simulator[] = [];
async function simulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const sim = await startSimulator({ pacing: 'burst', stopDelayMs: 5, ...options });
  sims.push(sim);
  return sim;
}
afterEach(async () => {
  await Promise.all(sims.splice(0).map((s) => s.close()));
});

describe('xiaozhi simulator', () => {
  it('answers the device hello with a websocket hello carrying its session id and 24 kHz 60 ms Opus', async () => {
    const sim = await simulator();
    const device = await Device.connect(sim.url, { 'Protocol-Version': '1', 'Device-Id': 'aa:bb:cc:dd:ee:ff', Authorization: 'Bearer t' });
    device.hello();
    await device.untilJson('hello');

    const session = sim.sessions[0]!;
    expect(device.events).toEqual([
      {
        json: {
          type: 'hello',
          version: 1,
          transport: 'websocket',
          session_id: session.id,
          audio_params: { format: 'opus', sample_rate: 24000, channels: 1, frame_duration: 60 },
        },
      },
    ]);
    expect(session.headers['device-id']).toBe('aa:bb:cc:dd:ee:ff');
    expect(session.headers.authorization).toBe('Bearer t');
    expect(session.protocolVersion).toBe(1);
    expect(session.received.json.map((m) => m.type)).toEqual(['hello']);
  });

  it('replies to listen detect with stt, llm, tts start, each sentence after its sentence_start, and tts stop last', async () => {
    const sim = await simulator();
    const device = await Device.connect(sim.url);
    device.hello();
    await device.untilJson('hello');
    device.send({ type: 'listen', state: 'detect', text: 'How are you?', session_id: '' });
    await device.untilJson('tts', 'stop');

    const reply = device.events.slice(1);
    expect(shape(reply)).toEqual(replyShape(speech));
    expect(reply[0]).toEqual({ json: expect.objectContaining({ type: 'stt', text: 'How are you?' }) });
    expect(reply[1]).toEqual({ json: expect.objectContaining({ type: 'llm', text: '😊', emotion: 'happy' }) });
    expect(reply.filter((e) => isJson(e, 'tts', 'sentence_start')).map((e) => 'json' in e && e.json.text)).toEqual(
      speech.sentences.map((s) => s.text),
    );
    expect(audioOf(reply)).toEqual(speech.sentences.flatMap((s) => s.packets));
    expect(sim.replyFrames()).toBe(audioOf(reply).length);
    expect(sim.sessions[0]!.repliesSent).toBe(1);
  });

  it('replies to listen stop with a short stt phrase and the same reply', async () => {
    const sim = await simulator({ speech: shortSpeech });
    const device = await Device.connect(sim.url);
    device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
    device.send({ type: 'listen', state: 'stop', session_id: '' });
    await device.untilJson('tts', 'stop');

    expect(shape(device.events)).toEqual(replyShape(shortSpeech));
    expect(device.events[0]).toEqual({ json: expect.objectContaining({ type: 'stt', text: expect.any(String) }) });
  });

  it('paces speech in real time, five frames of each sentence ahead', async () => {
    const sim = await simulator({ speech: shortSpeech, pacing: 'xiaozhi' });
    const device = await Device.connect(sim.url);
    const arrivals: number[] = [];
    device.ws.on('message', (_data, isBinary) => void (isBinary && arrivals.push(performance.now())));
    const asked = performance.now();
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.untilJson('tts', 'stop');

    expect(shape(device.events)).toEqual(replyShape(shortSpeech));
    // 8 frames a sentence: frames 0-4 leave together, 5, 6 and 7 at 60, 120 and 180 ms (less the 1 ms timer
    // slack); the next sentence follows at once.
    expect(arrivals[4]! - arrivals[0]!).toBeLessThan(60);
    expect(arrivals[5]! - asked).toBeGreaterThanOrEqual(59);
    expect(arrivals[7]! - asked).toBeGreaterThanOrEqual(179);
    expect(arrivals[23]! - asked).toBeGreaterThanOrEqual(3 * 179);
  });

  it('stops the audio at once and sends tts stop when the device aborts mid-reply', async () => {
    const sim = await simulator({ speech: shortSpeech, pacing: 'xiaozhi' });
    const device = await Device.connect(sim.url);
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.until((events) => audioOf(events).length > 0);
    device.send({ type: 'abort', reason: 'wake_word_detected', session_id: '' });
    await device.untilJson('tts', 'stop');

    const stopAt = device.events.findIndex((e) => isJson(e, 'tts', 'stop'));
    expect(audioOf(device.events).length).toBeLessThan(sim.replyFrames());
    // A following reply arrives whole and alone: no frame of the aborted one leaks after its tts stop.
    device.send({ type: 'listen', state: 'detect', text: 'again', session_id: '' });
    await device.untilJson('tts', 'stop', 2);
    expect(shape(device.events.slice(stopAt + 1))).toEqual(replyShape(shortSpeech));
    expect(sim.sessions[0]!.repliesSent).toBe(2);
  });

  it('aborts the reply in progress when a new listen detect arrives', async () => {
    const sim = await simulator({ speech: shortSpeech, pacing: 'xiaozhi' });
    const device = await Device.connect(sim.url);
    device.send({ type: 'listen', state: 'detect', text: 'one', session_id: '' });
    await device.until((events) => audioOf(events).length > 0);
    device.send({ type: 'listen', state: 'detect', text: 'two', session_id: '' });
    await device.untilJson('tts', 'stop', 2);

    const stopAt = device.events.findIndex((e) => isJson(e, 'tts', 'stop'));
    expect(shape(device.events.slice(stopAt + 1))).toEqual(replyShape(shortSpeech));
    expect(device.events[stopAt + 1]).toEqual({ json: expect.objectContaining({ type: 'stt', text: 'two' }) });
  });

  it('frames audio both ways with the v3 header when the device asks for Protocol-Version 3', async () => {
    const sim = await simulator({ speech: shortSpeech });
    const device = await Device.connect(sim.url, { 'Protocol-Version': '3' });
    const uplink = speech.sentences[0]!.packets[0]!;
    device.ws.send(encodeBinary(3, uplink));
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.untilJson('tts', 'stop');

    const frames = audioOf(device.events);
    expect(frames.map((f) => f.readUInt16BE(2))).toEqual(frames.map((f) => f.length - 4));
    expect(frames.map((f) => decodeBinary(3, f))).toEqual(
      shortSpeech.sentences.flatMap((s) => s.packets).map((p) => ({ ok: true, kind: 'opus', payload: p, timestamp: 0 })),
    );
    const session = sim.sessions[0]!;
    expect(session.protocolVersion).toBe(3);
    expect(session.received.audio).toEqual([uplink]);
  });

  it('replaces the chosen frames of a reply with packets libopus refuses to decode', async () => {
    const sim = await simulator({ corruptFrames: [0, 50] });
    const device = await Device.connect(sim.url);
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.untilJson('tts', 'stop');

    const decoder = new opus.OpusEncoder(24000, 1);
    const failed = audioOf(device.events).flatMap((packet, i) => {
      try {
        decoder.decode(packet);
        return [];
      } catch {
        return [i];
      }
    });
    expect(failed).toEqual([0, 50]);
    expect(audioOf(device.events)[50]).toEqual(CORRUPT_PACKET);
    expect(audioOf(device.events)).toHaveLength(sim.replyFrames());
  });

  it('never answers the hello when answerHello is false', async () => {
    const sim = await simulator({ answerHello: false, speech: shortSpeech });
    const device = await Device.connect(sim.url);
    device.hello();
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.untilJson('tts', 'stop');

    // Messages are handled in order, so a hello answer would have come before the stt.
    expect(device.events.some((e) => isJson(e, 'hello'))).toBe(false);
    expect(sim.sessions[0]!.received.json.map((m) => m.type)).toEqual(['hello', 'listen']);
  });

  it('shrugs off malformed and unknown messages without disturbing the session or others', async () => {
    const sim = await simulator({ speech: shortSpeech });
    const [bad, good] = await Promise.all([Device.connect(sim.url, { 'Protocol-Version': '2' }), Device.connect(sim.url)]);
    bad.ws.send('not json');
    bad.ws.send('[1,2]');
    bad.ws.send(Buffer.from([1, 2, 3]));
    bad.send({ type: 'listen' });
    bad.send({ type: 'iot', states: [] });
    bad.send({ type: 'listen', state: 'detect', text: 'still there?', session_id: '' });
    good.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await Promise.all([bad.untilJson('tts', 'stop'), good.untilJson('tts', 'stop')]);

    expect(shape(good.events)).toEqual(replyShape(shortSpeech));
    expect(shape(bad.events)).toEqual(replyShape(shortSpeech));
    expect(sim.sessions.find((s) => s.protocolVersion === 2)!.received.json.map((m) => m.type)).toEqual(['listen', 'iot', 'listen']);
  });

  it('serves /xiaozhi/v1 with or without the trailing slash and answers 404 elsewhere', async () => {
    const sim = await simulator();
    const base = `ws://127.0.0.1:${sim.port}`;
    const bare = await Device.connect(`${base}/xiaozhi/v1`);
    bare.ws.close();
    const status = await new Promise<number | undefined>((resolve) => {
      const ws = new WebSocket(`${base}/other/`);
      ws.on('unexpected-response', (_req, res) => {
        resolve(res.statusCode);
        ws.terminate();
      });
      ws.on('error', () => resolve(undefined));
    });
    expect(status).toBe(404);
    expect(sim.url).toBe(`${base}/xiaozhi/v1/`);
  });

  it('closes every connection mid-reply and leaves no timer behind', async () => {
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const sim = await startSimulator({ pacing: 'xiaozhi' });
    const device = await Device.connect(sim.url);
    const closed = new Promise<number>((resolve) => device.ws.once('close', (code) => resolve(code)));
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.until((events) => audioOf(events).length > 0);
    await sim.close();

    expect(await closed).toBe(1001);
    expect(timers()).toBeLessThanOrEqual(before);
  });

  it('survives a device that vanishes mid-reply', async () => {
    const sim = await simulator({ speech: shortSpeech, pacing: 'xiaozhi' });
    const device = await Device.connect(sim.url);
    device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await device.until((events) => audioOf(events).length > 0);
    device.ws.terminate();

    const other = await Device.connect(sim.url);
    other.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await other.untilJson('tts', 'stop');
    expect(shape(other.events)).toEqual(replyShape(shortSpeech));
  });

  it('lets each session choose its pacing on one simulator', async () => {
    const sim = await simulator({ speech: shortSpeech, pacing: 'xiaozhi', sessionOptions: (s) => (s.headers['device-id'] === 'burst' ? { pacing: 'burst' } : {}) });
    const [burst, paced] = await Promise.all([Device.connect(sim.url, { 'Device-Id': 'burst' }), Device.connect(sim.url)]);
    const arrivals = [burst, paced].map((device) => {
      const times: number[] = [];
      device.ws.on('message', (_data, isBinary) => void (isBinary && times.push(performance.now())));
      return times;
    });
    const asked = performance.now();
    for (const device of [burst, paced]) device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    await Promise.all([burst.untilJson('tts', 'stop'), paced.untilJson('tts', 'stop')]);

    expect(shape(burst.events)).toEqual(replyShape(shortSpeech));
    expect(shape(paced.events)).toEqual(replyShape(shortSpeech));
    // Three sentences of 8 frames: real time takes 3 × 180 ms; a burst, not even one sentence's time.
    expect(arrivals[0]![23]! - asked).toBeLessThan(179);
    expect(arrivals[1]![23]! - asked).toBeGreaterThanOrEqual(3 * 179);
  });

  it('lets each session choose whether it answers the hello', async () => {
    const sim = await simulator({ speech: shortSpeech, sessionOptions: (s) => (s.headers['device-id'] === 'mute' ? { answerHello: false } : {}) });
    const [mute, normal] = await Promise.all([Device.connect(sim.url, { 'Device-Id': 'mute' }), Device.connect(sim.url)]);
    for (const device of [mute, normal]) {
      device.hello();
      device.send({ type: 'listen', state: 'detect', text: 'hi', session_id: '' });
    }
    await Promise.all([mute.untilJson('tts', 'stop'), normal.untilJson('tts', 'stop')]);

    expect(shape(mute.events)).toEqual(replyShape(shortSpeech));
    expect(shape(normal.events)).toEqual(['hello', ...replyShape(shortSpeech)]);
  });

  describe('faults', () => {
    const frames = shortSpeech.sentences.flatMap((s) => s.packets);
    const ask = (device: Device, text = 'hi'): void => device.send({ type: 'listen', state: 'detect', text, session_id: '' });
    /** How much of the short reply's shape comes before the fault: its first `sent` frames and what precedes them. */
    const before = (sent: number): number => {
      const full = replyShape(shortSpeech);
      let at = 3; // stt, llm, tts start
      for (let seen = 0; seen < sent; ) if (full[at++] === 'audio') seen++;
      return at;
    };
    /** The short reply's shape with `extra` right after its first `sent` frames. */
    const withExtra = (sent: number, extra: string): string[] => {
      const full = replyShape(shortSpeech);
      return [...full.slice(0, before(sent)), extra, ...full.slice(before(sent))];
    };

    it.each([
      [undefined, 1011],
      [1006, 1006],
      [4000, 4000],
    ])('close with closeCode %s ends the connection with %i right after afterFrames frames', async (closeCode, code) => {
      const sim = await simulator({ speech: shortSpeech, fault: { kind: 'close', afterFrames: 10, closeCode } });
      const device = await Device.connect(sim.url);
      ask(device);

      expect(await device.closed).toBe(code);
      expect(shape(device.events)).toEqual(replyShape(shortSpeech).slice(0, before(10)));
      expect(audioOf(device.events)).toEqual(frames.slice(0, 10));
    });

    it('stall sends nothing after afterFrames frames and answers nothing more, yet keeps the connection open', async () => {
      const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
      const idle = timers();
      const sim = await startSimulator({ speech: shortSpeech, pacing: 'burst', stopDelayMs: 5, fault: { kind: 'stall', afterFrames: 10 } });
      const device = await Device.connect(sim.url);
      ask(device);
      await device.until((events) => audioOf(events).length === 10);
      ask(device, 'anyone there?');
      device.send({ type: 'abort', reason: 'wake_word_detected', session_id: '' });
      const session = sim.sessions[0]!;
      await vi.waitFor(() => expect(session.received.json).toHaveLength(3));
      // The simulator answers a message as it handles it: anything it had to say would be here long before this.
      await new Promise((resolve) => setTimeout(resolve, 100));

      expect(shape(device.events)).toEqual(replyShape(shortSpeech).slice(0, before(10)));
      expect(device.ws.readyState).toBe(WebSocket.OPEN);
      expect(session.repliesSent).toBe(1);
      await sim.close();
      expect(await device.closed).toBe(1001);
      expect(timers()).toBeLessThanOrEqual(idle);
    });

    it.each([0, 10, 24])('malformed-json sends a text message that is not JSON after %i frames, then the rest', async (afterFrames) => {
      const sim = await simulator({ speech: shortSpeech, fault: { kind: 'malformed-json', afterFrames } });
      const device = await Device.connect(sim.url);
      ask(device);
      await device.untilJson('tts', 'stop');

      expect(shape(device.events)).toEqual(withExtra(afterFrames, 'text'));
      expect(audioOf(device.events)).toEqual(frames);
      // Every reply meets the fault.
      const stopAt = device.events.length;
      ask(device);
      await device.untilJson('tts', 'stop', 2);
      expect(shape(device.events.slice(stopAt))).toEqual(withExtra(afterFrames, 'text'));
    });

    it.each([1, 2, 3] as const)('garbage-binary sends an extra undecodable Opus packet framed for v%i after afterFrames frames', async (version) => {
      const sim = await simulator({ speech: shortSpeech, fault: { kind: 'garbage-binary', afterFrames: 10 } });
      const device = await Device.connect(sim.url, { 'Protocol-Version': String(version) });
      ask(device);
      await device.untilJson('tts', 'stop');

      expect(shape(device.events)).toEqual(withExtra(10, 'audio'));
      const payloads = audioOf(device.events).map((f) => decodeBinary(version, f)).map((f) => f.ok && f.payload);
      expect(payloads).toEqual([...frames.slice(0, 10), GARBAGE_PACKET, ...frames.slice(10)]);
    });

    it('garbage-binary packets are Opus code 3 of zero frames, which libopus refuses', () => {
      expect(GARBAGE_PACKET[0]! & 3).toBe(3);
      expect(GARBAGE_PACKET[1]! & 0x3f).toBe(0);
      expect(GARBAGE_PACKET).not.toEqual(CORRUPT_PACKET);
      expect(() => new opus.OpusEncoder(24000, 1).decode(GARBAGE_PACKET)).toThrow();
    });

    it('oversized sends one binary message of 2 MiB by default after afterFrames frames, then the rest', async () => {
      const sim = await simulator({ speech: shortSpeech, fault: { kind: 'oversized', afterFrames: 10 } });
      const device = await Device.connect(sim.url);
      ask(device);
      await device.untilJson('tts', 'stop');

      expect(shape(device.events)).toEqual(withExtra(10, 'audio'));
      const audio = audioOf(device.events);
      expect(audio[10]).toHaveLength(2 * 1024 * 1024);
      expect([...audio.slice(0, 10), ...audio.slice(11)]).toEqual(frames);
    });

    it('oversized: a peer with a smaller maximum drops the session, and the simulator serves others on', async () => {
      const oversized: Fault = { kind: 'oversized', afterFrames: 10, oversizedBytes: 100_000 };
      const sim = await simulator({ speech: shortSpeech, sessionOptions: (s) => (s.headers['device-id'] === 'strict' ? { fault: oversized } : {}) });
      const strict = await Device.connect(sim.url, { 'Device-Id': 'strict' }, { maxPayload: 65_536 });
      strict.ws.on('error', () => {}); // ws reports the refused message as an error, then drops the connection
      ask(strict);

      await strict.closed;
      expect(audioOf(strict.events)).toEqual(frames.slice(0, 10));
      const other = await Device.connect(sim.url);
      ask(other);
      await other.untilJson('tts', 'stop');
      expect(shape(other.events)).toEqual(replyShape(shortSpeech));
    });

    it('fails only the first connection of a Device-Id, so that its reconnect finds a healthy session', async () => {
      const fault: Fault = { kind: 'close', afterFrames: 5 };
      const sim: Simulator = await simulator({
        speech: shortSpeech,
        sessionOptions: (s) => (sim.connectionsOf(s.headers['device-id'] ?? '') === 0 ? { fault } : {}),
      });
      const headers = { 'Device-Id': 'aa:bb:cc:dd:ee:ff' };
      const first = await Device.connect(sim.url, headers);
      ask(first);
      expect(await first.closed).toBe(1011);
      expect(audioOf(first.events)).toHaveLength(5);

      const again = await Device.connect(sim.url, headers);
      ask(again);
      await again.untilJson('tts', 'stop');
      expect(shape(again.events)).toEqual(replyShape(shortSpeech));
      expect(sim.connectionsOf('aa:bb:cc:dd:ee:ff')).toBe(2);
      expect(sim.connectionsOf('11:22:33:44:55:66')).toBe(0);
    });
  });

  describe('echo reply', () => {
    it('speaks the uplink of a manual utterance back at 24 kHz once listen stop comes', async () => {
      const sim = await simulator({ reply: 'echo' });
      const device = await Device.connect(sim.url);
      device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
      device.speak(uplink(10));
      device.send({ type: 'listen', state: 'stop', session_id: '' });
      await device.untilJson('tts', 'stop');

      expect(shape(device.events)).toEqual(echoShape(10));
      expect(textsOf(device.events)).toEqual(['echo: 0.60 s of speech', 'echo: 0.60 s of speech']);
      const decoder = new opus.OpusEncoder(24000, 1);
      const frames = audioOf(device.events).map((p) => decoder.decode(p));
      expect(frames.map((f) => f.length / 2)).toEqual(Array<number>(10).fill(1440));
      // About 24 kbit/s, as the server's speech: 180 bytes a 60 ms packet.
      const bytes = audioOf(device.events).reduce((n, p) => n + p.length, 0);
      expect(bytes / 10).toBeGreaterThan(120);
      expect(bytes / 10).toBeLessThan(240);
      // Each Opus pass delays the audio by 6.5 ms and the echo went through two: 13 ms, 312 samples at 24 kHz.
      const echoed = Buffer.concat(frames).subarray(312 * 2);
      const said = envelope(utterance.subarray(0, 10 * 960), 16000);
      expect(correlation(said, envelope(new Int16Array(echoed.buffer, echoed.byteOffset, echoed.length / 2), 24000))).toBeGreaterThan(0.95);
    });

    it.each(['auto', 'realtime'])('ends a %s-mode utterance after echoSilenceMs without uplink, without listen stop', async (mode) => {
      const sim = await simulator({ reply: 'echo', echoSilenceMs: 30 });
      const device = await Device.connect(sim.url);
      device.send({ type: 'listen', state: 'start', mode, session_id: '' });
      device.speak(uplink(10));
      await device.untilJson('tts', 'stop');

      expect(shape(device.events)).toEqual(echoShape(10));
      expect(textsOf(device.events)[0]).toBe('echo: 0.60 s of speech');
      expect(sim.sessions[0]!.received.json.map((m) => m.state)).toEqual(['start']);
    });

    it('decodes uplink packets of any duration and zero-pads the last downlink frame', async () => {
      const sim = await simulator({ reply: 'echo' });
      const device = await Device.connect(sim.url);
      device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
      device.speak(uplink(4, 20));
      device.send({ type: 'listen', state: 'stop', session_id: '' });
      await device.untilJson('tts', 'stop');

      expect(shape(device.events)).toEqual(echoShape(2));
      expect(textsOf(device.events)[0]).toBe('echo: 0.08 s of speech');
    });

    it('starts the utterance afresh at listen start and answers an empty one with no audio', async () => {
      const sim = await simulator({ reply: 'echo' });
      const device = await Device.connect(sim.url);
      device.speak(uplink(5));
      device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
      device.speak(uplink(10));
      device.send({ type: 'listen', state: 'stop', session_id: '' });
      device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
      device.send({ type: 'listen', state: 'stop', session_id: '' });
      await device.untilJson('tts', 'stop', 2);

      expect(shape(device.events)).toEqual([...echoShape(10), ...echoShape(0)]);
      expect(textsOf(device.events)).toEqual(['echo: 0.60 s of speech', 'echo: 0.60 s of speech', 'echo: 0.00 s of speech']);
    });

    it('answers listen detect with the speech reply when nothing was heard, else with the echo', async () => {
      const sim = await simulator({ reply: 'echo', speech: shortSpeech });
      const device = await Device.connect(sim.url);
      device.send({ type: 'listen', state: 'detect', text: 'How are you?', session_id: '' });
      await device.untilJson('tts', 'stop');
      expect(shape(device.events)).toEqual(replyShape(shortSpeech));
      expect(textsOf(device.events)[0]).toBe('How are you?');

      const stopAt = device.events.length;
      device.speak(uplink(3));
      device.send({ type: 'listen', state: 'detect', text: 'How are you?', session_id: '' });
      await device.untilJson('tts', 'stop', 2);
      expect(shape(device.events.slice(stopAt))).toEqual(echoShape(3));
      expect(textsOf(device.events.slice(stopAt))[0]).toBe('echo: 0.18 s of speech');
    });

    it('lets each session choose its reply on one simulator', async () => {
      const sim = await simulator({ speech: shortSpeech, sessionOptions: (s) => (s.headers['device-id'] === 'echo' ? { reply: 'echo' } : {}) });
      const [echo, speaker] = await Promise.all([Device.connect(sim.url, { 'Device-Id': 'echo' }), Device.connect(sim.url)]);
      for (const device of [echo, speaker]) {
        device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
        device.speak(uplink(10));
        device.send({ type: 'listen', state: 'stop', session_id: '' });
      }
      await Promise.all([echo.untilJson('tts', 'stop'), speaker.untilJson('tts', 'stop')]);

      expect(shape(echo.events)).toEqual(echoShape(10));
      expect(textsOf(echo.events)[0]).toBe('echo: 0.60 s of speech');
      expect(shape(speaker.events)).toEqual(replyShape(shortSpeech));
    });

    it('stops the echo at once when the device aborts, and keeps nothing of it for the next utterance', async () => {
      const sim = await simulator({ reply: 'echo', pacing: 'xiaozhi' });
      const device = await Device.connect(sim.url);
      device.send({ type: 'listen', state: 'start', mode: 'manual', session_id: '' });
      device.speak(uplink(10));
      device.send({ type: 'listen', state: 'stop', session_id: '' });
      await device.until((events) => audioOf(events).length > 0);
      device.send({ type: 'abort', reason: 'wake_word_detected', session_id: '' });
      await device.untilJson('tts', 'stop');

      const stopAt = device.events.findIndex((e) => isJson(e, 'tts', 'stop'));
      expect(audioOf(device.events).length).toBeLessThan(10);
      device.send({ type: 'listen', state: 'stop', session_id: '' });
      await device.untilJson('tts', 'stop', 2);
      expect(shape(device.events.slice(stopAt + 1))).toEqual(echoShape(0));
      expect(textsOf(device.events.slice(stopAt + 1))).toEqual(['echo: 0.00 s of speech']);
    });

    it('leaves no silence timer behind when it closes mid-utterance', async () => {
      const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
      const before = timers();
      const sim = await startSimulator({ reply: 'echo', echoSilenceMs: 60_000 });
      const device = await Device.connect(sim.url);
      const closed = new Promise<void>((resolve) => device.ws.once('close', () => resolve()));
      device.send({ type: 'listen', state: 'start', mode: 'auto', session_id: '' });
      device.speak(uplink(2));
      // Messages are handled in order: once the hello is answered, the audio was heard and silence is being timed.
      device.hello();
      await device.untilJson('hello');
      const timing = timers();
      await sim.close();
      await closed;

      // Timers of earlier tests' sockets may still be winding down, so counts only ever fall here.
      expect(timers()).toBeLessThan(timing);
      expect(timers()).toBeLessThanOrEqual(before);
    });
  });
});
