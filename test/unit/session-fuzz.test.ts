import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import { config as rxConfig, Observable, type Subscriber } from 'rxjs';
import { Session, type SessionMessage, type SessionOutcome, type SessionSocket } from '../../src/actors/session.ts';
import { loadConfig, type Config } from '../../src/config.ts';
import { Provisioner } from '../../src/identity/provisioning.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { createMetrics, type Metrics } from '../../src/observability/metrics.ts';
import { DOWNLINK_RATES, UPLINK_FRAME_MS } from '../../src/protocol/client.ts';
import { encodeBinary, isAcceptableHello, parseServerJson, type ProtocolVersion } from '../../src/protocol/xiaozhi.ts';
import { loadSpeech } from '../../src/sim/speech.ts';
import type { RawUpstream } from '../../src/streams/events.ts';
import { UpstreamError, type Upstream, type UpstreamErrorKind } from '../../src/transport/upstream.ts';

// Property-based fuzzing of the session actor: random client traffic, upstream traffic, upstream
// failures, socket backpressure, ticks and time, against a fake uWS socket and a fake upstream, with
// fake timers. Whatever happens, no handler throws, the client only ever receives PROTOCOL.md frames,
// a live session still answers, and every upstream audio frame is accounted for.
//
// The socket sink sends what a turn of the event loop wrote at the end of that turn (a queueMicrotask).
// queueMicrotask is faked with the timers, so that the test says where turns end: after each command
// (each is one event: a client message, an upstream read, a drain), and between timer callbacks, as
// Node runs microtasks between them; and anything a flush throws is caught like any other escape.

const RUNS = 250;

const speech = loadSpeech();
const PACKETS = speech.sentences.flatMap((s) => s.packets);
const RECONNECT_MAX_MS = 80;
const STALL_MS = 500;
const IDLE_MS = 1000;

// The fakes.

/** A uWS socket: records sends; once ended, every call throws as uWS does, and end() calls the close handler at once. */
class FakeSocket implements SessionSocket {
  readonly frames: { data: Buffer | string; isBinary: boolean }[] = [];
  bufferedAmount = 0;
  sendResult: 0 | 1 | 2 = 1;
  closed: { code: number; reason: string } | undefined;
  onClose: (code: number) => void = () => {};

  send(data: Buffer | string, isBinary: boolean): number {
    this.alive();
    this.frames.push({ data, isBinary });
    return this.sendResult;
  }

  cork(fn: () => void): void {
    this.alive();
    fn();
  }

  getBufferedAmount(): number {
    this.alive();
    return this.bufferedAmount;
  }

  end(code: number, reason: string): void {
    this.alive();
    this.closed = { code, reason };
    this.onClose(code);
  }

  private alive(): void {
    if (this.closed !== undefined) throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.');
  }
}

/**
 * The upstream as Upstream behaves: `messages$` is cold (each subscription is a new server session),
 * its first message must be an acceptable hello (else it errors `bad_hello`), and the test drives it.
 */
class FakeUpstream {
  private subscriber: Subscriber<RawUpstream> | undefined;
  helloDone = false;
  subscriptions = 0;
  readonly sent: string[] = [];
  audioSent = 0;

  readonly connect = () => this.messages$;

  private readonly messages$ = new Observable<RawUpstream>((subscriber) => {
    this.subscriber = subscriber;
    this.helloDone = false;
    this.subscriptions++;
    return () => {
      if (this.subscriber === subscriber) this.subscriber = undefined;
    };
  });

  get connected(): boolean {
    return this.subscriber !== undefined;
  }

  emit(raw: RawUpstream): void {
    const subscriber = this.subscriber;
    if (subscriber === undefined) return;
    if (!this.helloDone) {
      const parsed = typeof raw === 'string' ? parseServerJson(raw) : undefined;
      if (parsed === undefined || !parsed.ok || !isAcceptableHello(parsed.message)) {
        subscriber.error(new UpstreamError('bad_hello', 'the first message is not an acceptable hello'));
        return;
      }
      this.helloDone = true;
    }
    subscriber.next(raw);
  }

  fail(error: unknown): void {
    this.subscriber?.error(error);
  }

  /** Serialized as the real one does, so that what it cannot serialize fails here too. */
  send(message: object): boolean {
    this.sent.push(JSON.stringify({ ...message, session_id: 'fake' }));
    return true;
  }

  sendAudio(packet: Buffer): boolean {
    void packet;
    this.audioSent++;
    return true;
  }
}

/** A Session that also records what its handlers threw, whatever phase it was in. */
class ProbedSession extends Session {
  readonly thrown: { error: unknown; message: string }[] = [];

  protected override failed(error: unknown, message: SessionMessage): void {
    this.thrown.push({ error, message: message.kind });
    super.failed(error, message);
  }
}

/** RxJS reports errors no subscriber handles here (they would otherwise be thrown from a timer). */
const unhandled: unknown[] = [];

interface Settings {
  version: ProtocolVersion;
  policy: 'drop-oldest' | 'close';
  queueLimitMs: number;
  maxMessages: number;
  reconnectAttempts: number;
}

function harness(settings: Settings) {
  const config: Config = loadConfig({
    HELLO_TIMEOUT_MS: '2000',
    IDLE_TIMEOUT_MS: String(IDLE_MS),
    UPSTREAM_STALL_TIMEOUT_MS: String(STALL_MS),
    UPSTREAM_RECONNECT_ATTEMPTS: String(settings.reconnectAttempts),
    UPSTREAM_RECONNECT_BASE_MS: '10',
    UPSTREAM_RECONNECT_MAX_MS: String(RECONNECT_MAX_MS),
    UPSTREAM_PROTOCOL_VERSION: String(settings.version),
    SOCKET_HIGH_WATER_BYTES: '1024',
    QUEUE_LIMIT_MS: String(settings.queueLimitMs),
    QUEUE_MAX_MESSAGES: String(settings.maxMessages),
    SLOW_CLIENT_POLICY: settings.policy,
  });
  const metrics = createMetrics({ defaultMetrics: false });
  const socket = new FakeSocket();
  const upstream = new FakeUpstream();
  const outcomes: SessionOutcome[] = [];
  const escaped: unknown[] = [];
  const session = new ProbedSession(
    socket,
    {
      config,
      provisioner: new Provisioner(config, { url: 'ws://unused', otaUrl: undefined }, undefined, metrics),
      identity: { user: undefined },
      metrics,
      logger: silentLogger,
      openUpstream: () => upstream as unknown as Upstream,
      onEnded: (_, outcome) => outcomes.push(outcome),
    },
    'fuzz-session',
  );
  /** Anything thrown out of the session's reach: out of post(), out of a timer, out of the upstream. */
  const guard = (what: string, f: () => void): void => {
    try {
      f();
    } catch (error) {
      escaped.push({ what, error });
    }
  };
  const post = (m: SessionMessage): void => guard(`post ${m.kind}`, () => session.post(m));
  /** The socket's send buffer has room again: uWS tells the session's sink straight, not its mailbox. */
  const drain = (): void => guard('drain', () => session.drain());
  socket.onClose = (code) => post({ kind: 'client-closed', code });
  return {
    config,
    metrics,
    socket,
    upstream,
    session,
    outcomes,
    escaped,
    post,
    drain,
    version: settings.version,
    get ended() {
      return outcomes.length > 0;
    },
    /** Lets time run; microtasks (the sink's flushes) run between timer callbacks, as in Node. */
    advance: (ms: number) => guard('timers', () => vi.advanceTimersByTime(ms)),
    /** Lets time run until no timer is left: paced audio, pending reconnects, the hello timeout; microtasks too. */
    settle: () => guard('timers', () => vi.runAllTimers()),
    /** Ends the turn of the event loop: runs the microtasks it queued, the sink's flush among them. */
    endTurn: () => guard('microtasks', () => vi.runAllTicks()),
    fromUpstream: (raw: RawUpstream) => guard('upstream', () => upstream.emit(raw)),
    upstreamFails: (error: unknown) => guard('upstream', () => upstream.fail(error)),
  };
}

type Harness = ReturnType<typeof harness>;

// What the test can do.

type Up = { k: 'text'; text: string } | { k: 'opus'; packet: Buffer } | { k: 'bytes'; data: Buffer } | { k: 'framed-json'; text: string };

type Command =
  | { c: 'client-text'; text: string }
  | { c: 'client-binary'; data: Buffer }
  | { c: 'upstream'; up: Up }
  /** oneRead: the whole reply arrives in one upstream read (one turn), else each message in a turn of its own. */
  | { c: 'reply'; sentences: number; packets: number; interrupt: { at: number; text: string } | null; stop: boolean; oneRead: boolean }
  | { c: 'upstream-fails'; kind: UpstreamErrorKind | 'plain' }
  | { c: 'drain' }
  | { c: 'buffered'; bytes: number }
  | { c: 'send-result'; result: 0 | 1 | 2 }
  | { c: 'tick'; offsetMs: number }
  | { c: 'advance'; ms: number }
  | { c: 'shutdown'; graceful: boolean }
  | { c: 'client-closed'; code: number };

const json = (v: unknown): string => JSON.stringify(v);

/** Deeper than JSON.stringify survives on Node 20, yet 36 KB: under the 64 KiB client frame limit. */
const DEEP = `${'{"a":'.repeat(6000)}1${'}'.repeat(6000)}`;

const upstreamHello = fc
  .option(fc.constantFrom<unknown>(16000, 24000, 48000, null, 'fast', 0, 44100), { nil: undefined })
  .map((rate) =>
    json({
      type: 'hello',
      version: 1,
      transport: 'websocket',
      session_id: 'upstream-session',
      ...(rate === undefined ? {} : { audio_params: { format: 'opus', sample_rate: rate, channels: 1, frame_duration: 60 } }),
    }),
  );

const HELLO_UP = json({ type: 'hello', version: 1, transport: 'websocket', session_id: 'upstream-session' });
const TTS_START = json({ type: 'tts', state: 'start' });
const TTS_STOP = json({ type: 'tts', state: 'stop' });

const upstreamText: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: upstreamHello },
  { weight: 2, arbitrary: fc.string({ maxLength: 20 }).map((text) => json({ type: 'stt', text })) },
  { weight: 1, arbitrary: fc.constantFrom('happy', 'sad', 'neutral').map((emotion) => json({ type: 'llm', text: '😊', emotion })) },
  { weight: 3, arbitrary: fc.constant(TTS_START) },
  { weight: 2, arbitrary: fc.string({ maxLength: 20 }).map((text) => json({ type: 'tts', state: 'sentence_start', text })) },
  { weight: 3, arbitrary: fc.constant(TTS_STOP) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((id) => json({ type: 'mcp', payload: { jsonrpc: '2.0', id, method: 'tools/list' } })) },
  { weight: 1, arbitrary: fc.constantFrom('system', 'alert', 'custom', 'iot', 'goodbye', '').map((type) => json({ type, command: 'x' })) },
  { weight: 1, arbitrary: fc.string({ maxLength: 10 }).map((state) => json({ type: 'tts', state })) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      `{"type":"mcp","payload":{"deep":${DEEP}}}`,
      `{"type":"hello","transport":"websocket","audio_params":{"sample_rate":${DEEP}}}`,
      `{"type":"stt","text":${JSON.stringify('x'.repeat(70_000))}}`,
    ),
  },
  { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 30 }), fc.json({ maxDepth: 2 })) },
);

const upstreamMessage: fc.Arbitrary<Up> = fc.oneof(
  { weight: 5, arbitrary: upstreamText.map((text): Up => ({ k: 'text', text })) },
  { weight: 5, arbitrary: fc.constantFrom(...PACKETS).map((packet): Up => ({ k: 'opus', packet })) },
  { weight: 2, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 400 }).map((b): Up => ({ k: 'bytes', data: Buffer.from(b) })) },
  { weight: 1, arbitrary: upstreamText.map((text): Up => ({ k: 'framed-json', text })) },
);

const clientHello = fc
  .record(
    {
      type: fc.constant('hello'),
      version: fc.constant(1),
      downlink: fc.record(
        { codec: fc.constantFrom('pcm16', 'opus'), sampleRate: fc.constantFrom(...DOWNLINK_RATES), transport: fc.constantFrom('binary', 'json') },
        { requiredKeys: [] },
      ),
      uplink: fc.record(
        { codec: fc.constantFrom('opus', 'pcm16'), sampleRate: fc.constantFrom(...DOWNLINK_RATES), frameMs: fc.constantFrom(...UPLINK_FRAME_MS) },
        { requiredKeys: [] },
      ),
      pacing: fc.record({ mode: fc.constantFrom('none', 'realtime'), prebufferMs: fc.constantFrom(0, 60, 200, 1000, 5000) }, { requiredKeys: [] }),
    },
    { requiredKeys: ['type'] },
  )
  .map(json);

const clientText: fc.Arbitrary<string> = fc.oneof(
  { weight: 2, arbitrary: clientHello },
  {
    weight: 4,
    arbitrary: fc.option(fc.constantFrom('auto', 'manual', 'realtime'), { nil: undefined }).map((mode) => json({ type: 'listen', state: 'start', mode })),
  },
  { weight: 3, arbitrary: fc.constant(json({ type: 'listen', state: 'stop' })) },
  { weight: 2, arbitrary: fc.string({ maxLength: 30 }).map((text) => json({ type: 'text', text })) },
  { weight: 3, arbitrary: fc.constant(json({ type: 'abort' })) },
  { weight: 1, arbitrary: fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }).map((payload) => json({ type: 'mcp', payload })) },
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((id) => json({ type: 'ping', id })) },
  {
    weight: 3,
    arbitrary: fc.oneof(
      fc.string({ maxLength: 30 }),
      fc.json({ maxDepth: 2 }),
      fc.constantFrom(
        `{"type":"ping","id":${DEEP}}`,
        `{"type":"mcp","payload":{"deep":${DEEP}}}`,
        '{"type":"listen","state":"detect"}', '{"type":5}', '{"type":"__proto__"}', '{"type":"hello","version":2}', '{"type":"text","text":""}', '[]', 'null'),
    ),
  },
);

const clientBinary: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...PACKETS) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 4000 }).map((b) => Buffer.from(b)) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 4000 }).map((n) => Buffer.alloc(n * 2)) },
  { weight: 1, arbitrary: fc.constantFrom(Buffer.alloc(0), Buffer.alloc(1), Buffer.alloc(3), Buffer.alloc(3826, 0x08)) },
);

const interruption = fc.constantFrom(json({ type: 'abort' }), json({ type: 'listen', state: 'start', mode: 'realtime' }), json({ type: 'ping', id: 1 }));

/** Weighted so that most sequences live long enough to reach replies, backpressure and reconnects. */
const command: fc.Arbitrary<Command> = fc.oneof(
  { weight: 12, arbitrary: clientText.map((text): Command => ({ c: 'client-text', text })) },
  { weight: 6, arbitrary: clientBinary.map((data): Command => ({ c: 'client-binary', data })) },
  { weight: 14, arbitrary: upstreamMessage.map((up): Command => ({ c: 'upstream', up })) },
  {
    weight: 10,
    arbitrary: fc.record({
      c: fc.constant('reply' as const),
      sentences: fc.integer({ min: 1, max: 3 }),
      packets: fc.integer({ min: 1, max: 12 }),
      interrupt: fc.option(fc.record({ at: fc.nat(), text: interruption }), { nil: null }),
      stop: fc.boolean(),
      oneRead: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc
      .constantFrom<UpstreamErrorKind | 'plain'>('connect', 'hello_timeout', 'bad_hello', 'closed', 'socket', 'stall', 'plain')
      .map((kind): Command => ({ c: 'upstream-fails', kind })),
  },
  { weight: 4, arbitrary: fc.constant<Command>({ c: 'drain' }) },
  { weight: 5, arbitrary: fc.constantFrom(0, 500, 2000, 2000, 1_000_000).map((bytes): Command => ({ c: 'buffered', bytes })) },
  { weight: 2, arbitrary: fc.constantFrom<0 | 1 | 2>(0, 1, 1, 2).map((result): Command => ({ c: 'send-result', result })) },
  {
    weight: 4,
    arbitrary: fc
      .oneof({ weight: 4, arbitrary: fc.integer({ min: -100, max: STALL_MS - 100 }) }, { weight: 1, arbitrary: fc.constantFrom(STALL_MS + 1, IDLE_MS + 1, 3 * IDLE_MS) })
      .map((offsetMs): Command => ({ c: 'tick', offsetMs })),
  },
  { weight: 5, arbitrary: fc.oneof(fc.integer({ min: 0, max: 100 }), fc.constantFrom(60, 500, 1000, 2500)).map((ms): Command => ({ c: 'advance', ms })) },
  { weight: 1, arbitrary: fc.boolean().map((graceful): Command => ({ c: 'shutdown', graceful })) },
  { weight: 1, arbitrary: fc.constantFrom(1000, 1001, 1005, 1006, 4000).map((code): Command => ({ c: 'client-closed', code })) },
);

const settings: fc.Arbitrary<Settings> = fc.record({
  version: fc.constantFrom<ProtocolVersion>(1, 2, 3),
  policy: fc.constantFrom('drop-oldest' as const, 'close' as const),
  queueLimitMs: fc.constantFrom(120, 600, 5000),
  maxMessages: fc.constantFrom(16, 1000),
  reconnectAttempts: fc.integer({ min: 0, max: 3 }),
});

/** Most sequences open the session first (client hello, upstream hello), so that they reach further. */
const scenario = fc.record({
  settings,
  opening: fc.option(fc.tuple(clientHello, upstreamHello), { freq: 5, nil: null }),
  commands: fc.array(command, { maxLength: 40, size: 'max' }),
});

type Scenario = typeof scenario extends fc.Arbitrary<infer S> ? S : never;

function fromUpstream(h: Harness, up: Up): void {
  switch (up.k) {
    case 'text':
      return h.fromUpstream(up.text);
    case 'opus':
      return h.fromUpstream(encodeBinary(h.version, up.packet));
    case 'bytes':
      return h.fromUpstream(up.data);
    case 'framed-json':
      // Version 3 carries at most 65535 payload bytes.
      return h.fromUpstream(encodeBinary(h.version, Buffer.from(up.text).subarray(0, 65535), 'json'));
  }
}

function apply(h: Harness, cmd: Command): void {
  switch (cmd.c) {
    case 'client-text':
      return h.post({ kind: 'client-text', text: cmd.text });
    case 'client-binary':
      return h.post({ kind: 'client-binary', data: cmd.data });
    case 'upstream':
      return fromUpstream(h, cmd.up);
    case 'reply': {
      const steps: (() => void)[] = [
        () => h.fromUpstream(json({ type: 'stt', text: 'what time is it' })),
        () => h.fromUpstream(json({ type: 'llm', text: '😊', emotion: 'happy' })),
        () => h.fromUpstream(TTS_START),
      ];
      for (let s = 0; s < cmd.sentences; s++) {
        const sentence = speech.sentences[s % speech.sentences.length]!;
        steps.push(() => h.fromUpstream(json({ type: 'tts', state: 'sentence_start', text: sentence.text })));
        for (const packet of sentence.packets.slice(0, cmd.packets)) steps.push(() => h.fromUpstream(encodeBinary(h.version, packet)));
      }
      if (cmd.stop) steps.push(() => h.fromUpstream(TTS_STOP));
      // Each upstream message is a read (a turn) of its own unless the reply came in one read; the
      // interruption is a client message, an event of its own, so the turn ends before it and after it.
      const interrupt = cmd.interrupt;
      const at = interrupt === null ? -1 : interrupt.at % (steps.length + 1);
      for (let i = 0; i <= steps.length; i++) {
        if (i === at) {
          h.endTurn();
          h.post({ kind: 'client-text', text: interrupt!.text });
          h.endTurn();
        }
        if (i === steps.length) break;
        steps[i]!();
        if (!cmd.oneRead) h.endTurn();
      }
      return;
    }
    case 'upstream-fails':
      return h.upstreamFails(cmd.kind === 'plain' ? new Error('ECONNRESET') : new UpstreamError(cmd.kind, `fuzz: ${cmd.kind}`));
    case 'drain':
      return h.drain();
    case 'buffered':
      h.socket.bufferedAmount = cmd.bytes;
      return;
    case 'send-result':
      h.socket.sendResult = cmd.result;
      return;
    case 'tick':
      return h.post({ kind: 'tick', now: performance.now() + cmd.offsetMs });
    case 'advance':
      return h.advance(cmd.ms);
    case 'shutdown':
      return h.post({ kind: 'shutdown', graceful: cmd.graceful });
    case 'client-closed':
      return h.post({ kind: 'client-closed', code: cmd.code });
  }
}

function play(s: Scenario): Harness {
  vi.clearAllTimers();
  unhandled.length = 0;
  const h = harness(s.settings);
  if (s.opening !== null) {
    h.post({ kind: 'client-text', text: s.opening[0] });
    h.endTurn();
    h.fromUpstream(s.opening[1]);
    h.endTurn();
  }
  for (const cmd of s.commands) {
    apply(h, cmd);
    h.endTurn();
  }
  return h;
}

// The properties.

const SERVER_TYPES = new Set(['hello', 'state', 'user_text', 'assistant_text', 'emotion', 'audio_frame', 'mcp', 'error', 'pong']);
const STATES = new Set(['ready', 'listening', 'processing', 'speaking', 'reconnecting']);
const ERROR_CODES = new Set(['bad_message', 'bad_audio', 'hello_required', 'upstream_unavailable', 'upstream_lost', 'too_slow', 'overloaded', 'internal']);

const describeError = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e));

/** (a) No handler threw, nothing escaped, the session ended at most once and never as `internal`. */
function expectNoFailure(h: Harness): void {
  if (h.session.thrown.length > 0) {
    const t = h.session.thrown[0]!;
    throw new Error(`a handler threw on ${t.message}: ${describeError(t.error)}`);
  }
  if (h.escaped.length > 0) {
    const e = h.escaped[0] as { what: string; error: unknown };
    throw new Error(`an exception escaped from ${e.what}: ${describeError(e.error)}`);
  }
  if (unhandled.length > 0) throw new Error(`an RxJS pipeline errored with nobody to handle it: ${describeError(unhandled[0])}`);
  expect(h.outcomes.length).toBeLessThanOrEqual(1);
  expect(h.outcomes).not.toContain('internal');
}

type ClientView = { transport: 'binary' | 'json'; codec: 'pcm16' | 'opus' };

/** (b) Text frames are JSON of a PROTOCOL.md gateway→client type; binary frames are audio of the negotiated format. */
function expectProtocolFrames(h: Harness): void {
  let negotiated: ClientView | undefined;
  let lastSeq = -1;
  h.socket.frames.forEach((frame, i) => {
    const where = `frame ${i}`;
    if (frame.isBinary) {
      expect(typeof frame.data, where).not.toBe('string');
      expect(negotiated, `${where}: binary before the gateway's hello`).toBeDefined();
      expect(negotiated!.transport, `${where}: binary audio on a json transport`).toBe('binary');
      // An empty upstream packet passes an opus downlink untouched (a lost frame to the client's decoder).
      if (negotiated!.codec === 'pcm16') expect(frame.data.length, `${where}: an empty pcm16 frame`).toBeGreaterThan(0);
      if (negotiated!.codec === 'pcm16') expect(frame.data.length % 2, `${where}: pcm16 of an odd length`).toBe(0);
      return;
    }
    expect(typeof frame.data, where).toBe('string');
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(frame.data as string) as Record<string, unknown>;
    } catch {
      throw new Error(`${where} is not JSON: ${String(frame.data).slice(0, 200)}`);
    }
    expect(m !== null && typeof m === 'object' && !Array.isArray(m), where).toBe(true);
    expect(typeof m.type, where).toBe('string');
    expect(SERVER_TYPES.has(m.type as string), `${where}: type ${String(m.type)}`).toBe(true);
    switch (m.type) {
      case 'hello': {
        expect(negotiated, `${where}: a second hello`).toBeUndefined();
        const downlink = m.downlink as ClientView & { sampleRate: unknown };
        negotiated = { transport: downlink.transport, codec: downlink.codec };
        expect(DOWNLINK_RATES as readonly unknown[], `${where}: downlink sample rate`).toContain(downlink.sampleRate);
        expect(m.version).toBe(1);
        expect(m.sessionId).toBe('fuzz-session');
        return;
      }
      case 'state':
        expect(STATES.has(m.state as string), `${where}: state ${String(m.state)}`).toBe(true);
        return;
      case 'error':
        expect(ERROR_CODES.has(m.code as string), `${where}: code ${String(m.code)}`).toBe(true);
        expect(typeof m.message).toBe('string');
        return;
      case 'audio_frame':
        expect(negotiated?.transport, `${where}: audio_frame on a binary transport`).toBe('json');
        expect(typeof m.data).toBe('string');
        expect(Number.isInteger(m.seq) && (m.seq as number) > lastSeq, `${where}: seq ${String(m.seq)} after ${lastSeq}`).toBe(true);
        lastSeq = m.seq as number;
        return;
      case 'user_text':
      case 'assistant_text':
        expect(typeof m.text).toBe('string');
        return;
      case 'emotion':
        expect(typeof m.emotion).toBe('string');
        expect(typeof m.emoji).toBe('string');
        return;
    }
  });
}

const lastState = (h: Harness): string | undefined => {
  for (let i = h.socket.frames.length - 1; i >= 0; i--) {
    const f = h.socket.frames[i]!;
    if (typeof f.data === 'string' && f.data.startsWith('{"type":"state"')) return (JSON.parse(f.data) as { state: string }).state;
  }
  return undefined;
};

const textFramesFrom = (h: Harness, from: number): Record<string, unknown>[] =>
  h.socket.frames
    .slice(from)
    .filter((f) => typeof f.data === 'string')
    .map((f) => JSON.parse(f.data as string) as Record<string, unknown>);

/**
 * (c) A session that has not ended is not stuck: once its socket drains, a session still waiting for a
 * hello takes one, a reconnecting one recovers on an upstream hello (`state ready`), and a ping is
 * answered with a pong.
 */
function expectAnswersPing(h: Harness): void {
  if (h.ended) return;
  h.socket.bufferedAmount = 0;
  h.socket.sendResult = 1;
  h.drain();
  if (h.upstream.subscriptions === 0) h.post({ kind: 'client-text', text: json({ type: 'hello' }) });
  h.settle();
  h.drain();
  if (h.ended) return;
  expect(h.upstream.connected, 'not ended, yet without an upstream and no reconnect pending').toBe(true);
  if (!h.upstream.helloDone) {
    const reconnecting = lastState(h) === 'reconnecting';
    const before = h.socket.frames.length;
    h.fromUpstream(HELLO_UP);
    h.settle();
    if (h.ended) return;
    const after = textFramesFrom(h, before);
    if (reconnecting) expect(after, 'a reconnecting session recovers on an upstream hello').toContainEqual({ type: 'state', state: 'ready' });
  }
  const before = h.socket.frames.length;
  const pong = { type: 'pong', id: 'probe' };
  h.post({ kind: 'client-text', text: json({ type: 'ping', id: 'probe' }) });
  h.settle();
  h.drain();
  if (h.ended) return;
  expect(textFramesFrom(h, before), 'a live session answers a ping').toContainEqual(pong);
}

async function sum(metrics: Metrics, name: string): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name);
  if (metric === undefined) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  return values.reduce((n, v) => n + v.value, 0);
}

/** (d) Once the client has closed, every upstream audio frame was pushed, dropped or failed: exactly once. */
async function expectAudioAccounted(h: Harness): Promise<void> {
  if (!h.ended) h.post({ kind: 'client-closed', code: 1000 });
  h.settle();
  const received = await sum(h.metrics, 'voicegw_upstream_frames_total');
  const pushed = await sum(h.metrics, 'voicegw_frames_pushed_total');
  const dropped = await sum(h.metrics, 'voicegw_frames_dropped_total');
  const failed = await sum(h.metrics, 'voicegw_send_failures_total');
  expect({ received, accounted: pushed + dropped + failed }).toEqual({ received, accounted: received });
  expect(await sum(h.metrics, 'voicegw_queue_depth_frames')).toBe(0);
}

describe('the session actor under random traffic', () => {
  let onUnhandledError: typeof rxConfig.onUnhandledError;

  beforeAll(() => {
    onUnhandledError = rxConfig.onUnhandledError;
    rxConfig.onUnhandledError = (error) => unhandled.push(error);
  });
  afterAll(() => {
    rxConfig.onUnhandledError = onUnhandledError;
  });
  beforeEach(() => {
    // What vitest fakes by default (Intl aside, unused here), plus queueMicrotask (the sink's flush); process.nextTick stays real.
    vi.useFakeTimers({
      toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate', 'clearImmediate', 'Date', 'hrtime', 'performance', 'queueMicrotask'],
    });
  });
  afterEach(() => {
    vi.clearAllTimers();
    vi.useRealTimers();
  });

  it('never lets a handler throw and only ever sends the client protocol frames', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const h = play(s);
        expectNoFailure(h);
        expectProtocolFrames(h);
      }),
      { numRuns: RUNS },
    );
  });

  it('still answers a ping after random traffic unless it has ended, recovering from a reconnect first', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const h = play(s);
        expectAnswersPing(h);
        expectNoFailure(h);
        expectProtocolFrames(h);
      }),
      { numRuns: RUNS },
    );
  });

  it('accounts for every upstream audio frame as pushed, dropped or failed once the client has closed', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const h = play(s);
        await expectAudioAccounted(h);
        expectNoFailure(h);
        expectProtocolFrames(h);
      }),
      { numRuns: RUNS },
    );
  });
});
