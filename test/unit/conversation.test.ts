import { describe, expect, it } from 'vitest';
import { decide, initialConversation, type Command, type Conversation, type ConversationEvent, type Counted, type Settings, type Steer } from '../../src/actors/conversation.ts';
import type { ReplyOutcome } from '../../src/actors/session-report.ts';
import { CloseCode, type ClientHello, type ClientMessage, type ClientParse, type ErrorCode, type ServerMessage, type SessionState } from '../../src/protocol/client.ts';
import type { ServerMessage as XiaozhiMessage } from '../../src/protocol/xiaozhi.ts';
import type { UpstreamMessage } from '../../src/transport/upstream.ts';

// `decide` table by table: each row is a state (initialConversation plus overrides), one event, the state
// fields expected after it and every command expected, in order. Commands are compared exactly, except
// for log lines' fields and the wording of error messages (their codes are exact).

const T = 100_000;

const SETTINGS: Settings = {
  sessionId: 'session-1',
  bufferBytes: 1000,
  stallTimeoutMs: 5000,
  idleTimeoutMs: 60_000,
  maxFrameBytes: 65_536,
  reconnect: { attempts: 3, baseMs: 100, maxMs: 1000 },
};

/** The defaults PROTOCOL.md shows, with an Opus uplink. */
const HELLO: ClientHello = {
  type: 'hello',
  version: 1,
  downlink: { codec: 'pcm16', sampleRate: 24000, transport: 'binary' },
  uplink: { codec: 'opus', sampleRate: 16000, frameMs: 60 },
  pacing: { mode: 'none', prebufferMs: 0 },
};
const HELLO_PCM_UP: ClientHello = { ...HELLO, uplink: { codec: 'pcm16', sampleRate: 16000, frameMs: 20 } };
const HELLO_OPUS_DOWN: ClientHello = { ...HELLO, downlink: { codec: 'opus', sampleRate: 48000, transport: 'json' } };

// States.

const given = (overrides: Partial<Conversation> = {}): Conversation => ({ ...initialConversation(0), ...overrides });

const CONNECTING: Partial<Conversation> = { phase: 'connecting', hello: HELLO, connection: 1 };
/** Open, ready, and heard from both sides a second ago. */
const OPEN: Partial<Conversation> = {
  phase: 'open',
  state: 'ready',
  hello: HELLO,
  connection: 1,
  lastClientAt: T - 1000,
  lastUpstreamAt: T - 1000,
  upstreamProgressAt: T - 1000,
};
const SPEAKING: Partial<Conversation> = { ...OPEN, state: 'speaking', replyDueAt: T - 2000 };
const PROCESSING: Partial<Conversation> = { ...OPEN, state: 'processing', replyDueAt: T - 1000 };
const LISTENING: Partial<Conversation> = { ...OPEN, state: 'listening' };
/** Lost the first connection; the first reconnect attempt (connection 3) is under way. */
const RECONNECTING: Partial<Conversation> = {
  ...OPEN,
  phase: 'reconnecting',
  state: 'reconnecting',
  connection: 3,
  reconnecting: true,
  reconnectAttempts: 1,
};
const ENDING: Partial<Conversation> = { ...OPEN, phase: 'ending', endingOutcome: 'idle' };

// Events.

const said = (message: ClientMessage, now = T): ConversationEvent => ({ kind: 'client-text', parsed: { ok: true, message }, now });
const garbled = (parsed: ClientParse & { ok: false }, now = T): ConversationEvent => ({ kind: 'client-text', parsed, now });
const heard = (message: XiaozhiMessage, now = T): ConversationEvent => ({ kind: 'upstream', message, now });
const audio = (bytes: number[], now = T): ConversationEvent => ({ kind: 'client-audio', data: Buffer.from(bytes), now });
const tick = (now: number, audioAt = 0, unsent = 0, clientAudioAt = 0): ConversationEvent => ({ kind: 'tick', now, audioAt, clientAudioAt, unsent });
const failed = (connection: number, fault: 'connect' | 'closed' | 'socket' | 'provision' | 'activation_timeout' = 'closed', detail = 'ECONNRESET 10.1.2.3:8000'): ConversationEvent => ({
  kind: 'upstream-failed',
  connection,
  fault,
  detail,
});
const closedBy = (code: number, tooLarge = false): ConversationEvent => ({ kind: 'client-closed', code, tooLarge });

const LISTEN_AUTO: ClientMessage = { type: 'listen', state: 'start', mode: 'auto' };
const LISTEN_MANUAL: ClientMessage = { type: 'listen', state: 'start', mode: 'manual' };
const LISTEN_STOP: ClientMessage = { type: 'listen', state: 'stop' };
const ABORT: ClientMessage = { type: 'abort' };
const PING: ClientMessage = { type: 'ping', id: 'p-7' };
const PLAYOUT: ClientMessage = { type: 'playout', bufferedMs: 120, underruns: 2, playedMs: 4000 };
const TYPED: ClientMessage = { type: 'text', text: 'what time is it' };

const UP_HELLO: XiaozhiMessage = { type: 'hello', sessionId: 'up-1', transport: 'websocket', sampleRate: 16000 };
const TTS_START: XiaozhiMessage = { type: 'tts', state: 'start' };
const TTS_SENTENCE: XiaozhiMessage = { type: 'tts', state: 'sentence_start', text: 'It is noon.' };
const TTS_STOP: XiaozhiMessage = { type: 'tts', state: 'stop' };

/** A valid Opus packet: TOC 0x78 is config 15 (SILK/hybrid 20 ms), code 0 (one frame). */
const OPUS_PACKET = [0x78, 0x01, 0x02, 0x03];

// Commands.

const send = (message: ServerMessage, direct = false): Command => ({ c: 'send', message, direct });
const stateSent = (state: SessionState): Command => send({ type: 'state', state });
/** An error to the client: the code and the route exact, the wording free. */
const error = (code: ErrorCode, direct = false): Command => ({ c: 'send', message: { type: 'error', code, message: expect.any(String) }, direct });
const steer = (item: Steer): Command => ({ c: 'steer', item });
const up = (message: UpstreamMessage): Command => ({ c: 'send-up', message });
const count = (metric: Counted, label: string): Command => ({ c: 'count', metric, label });
const reply = (event: 'started' | ReplyOutcome): Command => ({ c: 'reply', event });
/** A log line: its level and text exact, its fields incidental. */
const log = (level: 'debug' | 'info' | 'warn', msg: string): Command => expect.objectContaining({ c: 'log', level, msg });
const close = (code: number, reason: string): Command => ({ c: 'close', code, reason });
const endSocket = (code: number, reason: string): Command => ({ c: 'end-socket', code, reason });
const finish = (outcome: Extract<Command, { c: 'finish' }>['outcome'], code: number, replyCut: ReplyOutcome): Command => ({ c: 'finish', outcome, code, replyCut });
const ABORT_UP = up({ type: 'abort', reason: 'client_abort' });
/** Everything an abort of the reply in progress does. */
const ABORTED: Command[] = [reply('aborted'), ABORT_UP, steer('abort')];
/** An upstream lost while open, before the reconnect decision. */
const lost = (fault: string): Command[] => [
  count('upstream_error', fault),
  { c: 'disconnect' },
  reply('upstream_lost'),
  log('warn', 'upstream lost'),
  error('upstream_lost'),
  steer('reply-end'),
  stateSent('reconnecting'),
];

// The table.

interface Row {
  name: string;
  given: Partial<Conversation>;
  event: ConversationEvent;
  settings?: Partial<Settings>;
  /** The phase and the client's state always; any other field that matters. */
  then: Pick<Conversation, 'phase' | 'state'> & Partial<Conversation>;
  commands: Command[];
}

function check({ given: overrides, event, settings, then, commands }: Row): void {
  const before = Object.freeze(given(overrides));
  const snapshot = { ...before };
  const after = decide(before, event, { ...SETTINGS, ...settings });
  expect(after.commands).toEqual(commands);
  expect(after.state).toMatchObject(then);
  // Pure: the state before is left as it was.
  expect(before).toEqual(snapshot);
}

/** Several events in turn; the commands of each. */
function play(state: Conversation, events: ConversationEvent[], settings: Settings = SETTINGS): { state: Conversation; commands: Command[][] } {
  const all: Command[][] = [];
  for (const event of events) {
    const next = decide(state, event, settings);
    state = next.state;
    all.push(next.commands);
  }
  return { state, commands: all };
}

describe('decide: the hello', () => {
  it.each<Row>([
    {
      name: 'a listen before hello is refused with hello_required, straight to the socket',
      given: {},
      event: said(LISTEN_AUTO, 5),
      then: { phase: 'awaiting-hello', state: 'ready', hello: undefined, connection: 0, lastClientAt: 5 },
      commands: [count('client_message', 'listen'), error('hello_required', true)],
    },
    {
      name: 'a ping before hello gets hello_required, not a pong',
      given: {},
      event: said(PING),
      then: { phase: 'awaiting-hello', state: 'ready', hello: undefined },
      commands: [count('client_message', 'ping'), error('hello_required', true)],
    },
    {
      name: 'a playout before hello gets hello_required and no playout command',
      given: {},
      event: said(PLAYOUT),
      then: { phase: 'awaiting-hello', state: 'ready' },
      commands: [count('client_message', 'playout'), error('hello_required', true)],
    },
    {
      name: 'a message that does not parse before hello is a bad_message straight to the socket, with the parser\'s detail',
      given: {},
      event: garbled({ ok: false, reason: 'not_json', detail: 'text frames must carry one JSON object' }),
      then: { phase: 'awaiting-hello', state: 'ready' },
      commands: [count('bad_message', 'not_json'), send({ type: 'error', code: 'bad_message', message: 'text frames must carry one JSON object' }, true)],
    },
    {
      name: 'hello opens the upstream and the pipeline with connection 1, and waits in connecting without a word to the client',
      given: {},
      event: said(HELLO, 7),
      then: { phase: 'connecting', state: 'ready', hello: HELLO, connection: 1, upstreamUnsent: 0, upstreamProgressAt: 7, lastClientAt: 7 },
      commands: [count('client_message', 'hello'), { c: 'open', hello: HELLO, connection: 1 }],
    },
    {
      name: 'a second hello while connecting is a bad_message through the pipeline',
      given: CONNECTING,
      event: said(HELLO),
      then: { phase: 'connecting', state: 'ready', connection: 1 },
      commands: [count('client_message', 'hello'), error('bad_message')],
    },
    {
      name: 'a second hello once open is a bad_message, and the session goes on',
      given: OPEN,
      event: said(HELLO),
      then: { phase: 'open', state: 'ready', connection: 1 },
      commands: [count('client_message', 'hello'), error('bad_message')],
    },
    {
      name: 'no hello in time closes 4001 at once',
      given: {},
      event: { kind: 'hello-timeout' },
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '4001'), finish('hello_timeout', CloseCode.helloTimeout, 'client_gone'), endSocket(4001, 'no hello in time')],
    },
    {
      name: 'the hello timer firing after the hello is ignored',
      given: CONNECTING,
      event: { kind: 'hello-timeout' },
      then: { phase: 'connecting', state: 'ready' },
      commands: [],
    },
    {
      name: 'the upstream hello while connecting: connected, the negotiated hello (pcm16 at the rate asked for), then state ready',
      given: CONNECTING,
      event: heard(UP_HELLO, 50),
      then: { phase: 'open', state: 'ready', reconnectAttempts: 0, lastUpstreamAt: 50 },
      commands: [
        { c: 'connected', now: 50 },
        send({ type: 'hello', version: 1, sessionId: 'session-1', downlink: HELLO.downlink, uplink: HELLO.uplink, pacing: HELLO.pacing }),
        stateSent('ready'),
        log('info', 'session open'),
      ],
    },
    {
      name: 'the upstream hello with an Opus downlink: the downlink rate is the upstream\'s',
      given: { ...CONNECTING, hello: HELLO_OPUS_DOWN },
      event: heard(UP_HELLO, 50),
      then: { phase: 'open', state: 'ready' },
      commands: [
        { c: 'connected', now: 50 },
        send({
          type: 'hello',
          version: 1,
          sessionId: 'session-1',
          downlink: { codec: 'opus', sampleRate: 16000, transport: 'json' },
          uplink: HELLO.uplink,
          pacing: HELLO.pacing,
        }),
        stateSent('ready'),
        log('info', 'session open'),
      ],
    },
    {
      name: 'the upstream hello without a usable rate: an Opus downlink gets the xiaozhi default, 24000',
      given: { ...CONNECTING, hello: HELLO_OPUS_DOWN },
      event: heard({ ...UP_HELLO, sampleRate: undefined }, 50),
      then: { phase: 'open', state: 'ready' },
      commands: [
        { c: 'connected', now: 50 },
        send({
          type: 'hello',
          version: 1,
          sessionId: 'session-1',
          downlink: { codec: 'opus', sampleRate: 24000, transport: 'json' },
          uplink: HELLO.uplink,
          pacing: HELLO.pacing,
        }),
        stateSent('ready'),
        log('info', 'session open'),
      ],
    },
    {
      name: 'the upstream hello after a reconnect: recovered, counted, state ready, and no second client hello',
      given: RECONNECTING,
      event: heard(UP_HELLO, 60),
      then: { phase: 'open', state: 'ready', reconnecting: false, reconnectAttempts: 0, connection: 3 },
      commands: [{ c: 'connected', now: 60 }, count('reconnect', 'recovered'), log('info', 'upstream recovered'), stateSent('ready')],
    },
    {
      name: 'a duplicate upstream hello once open only resets the attempts',
      given: { ...OPEN, reconnectAttempts: 2 },
      event: heard(UP_HELLO, 60),
      then: { phase: 'open', state: 'ready', reconnectAttempts: 0 },
      commands: [{ c: 'connected', now: 60 }],
    },
  ])('$name', check);
});

describe('decide: the client\'s turns', () => {
  it.each<Row>([
    {
      name: 'text while ready: detect sent up with the text, input ended, processing',
      given: OPEN,
      event: said(TYPED),
      then: { phase: 'open', state: 'processing', replyDueAt: T, lastClientAt: T, discarding: false },
      commands: [
        count('client_message', 'text'),
        steer('discard'),
        up({ type: 'listen', state: 'detect', text: 'what time is it' }),
        { c: 'input-ended', at: T },
        stateSent('processing'),
      ],
    },
    {
      name: 'text while speaking aborts the reply first',
      given: SPEAKING,
      event: said(TYPED),
      then: { phase: 'open', state: 'processing', replyDueAt: T, discarding: true },
      commands: [
        count('client_message', 'text'),
        ...ABORTED,
        up({ type: 'listen', state: 'detect', text: 'what time is it' }),
        { c: 'input-ended', at: T },
        stateSent('processing'),
      ],
    },
    {
      name: 'listen start while ready: encoder reset, listen start sent up with its mode, listening',
      given: OPEN,
      event: said(LISTEN_AUTO),
      then: { phase: 'open', state: 'listening', discarding: false },
      commands: [
        count('client_message', 'listen'),
        steer('discard'),
        { c: 'uplink', audio: 'reset' },
        up({ type: 'listen', state: 'start', mode: 'auto' }),
        stateSent('listening'),
      ],
    },
    {
      name: 'listen start while speaking is a barge-in: the reply is aborted (abort up, steer abort), then listening',
      given: SPEAKING,
      event: said(LISTEN_MANUAL),
      then: { phase: 'open', state: 'listening', discarding: true },
      commands: [
        count('client_message', 'listen'),
        ...ABORTED,
        { c: 'uplink', audio: 'reset' },
        up({ type: 'listen', state: 'start', mode: 'manual' }),
        stateSent('listening'),
      ],
    },
    {
      name: 'listen start while processing discards what is held, without an abort up',
      given: PROCESSING,
      event: said(LISTEN_AUTO),
      then: { phase: 'open', state: 'listening', discarding: false },
      commands: [
        count('client_message', 'listen'),
        steer('discard'),
        { c: 'uplink', audio: 'reset' },
        up({ type: 'listen', state: 'start', mode: 'auto' }),
        stateSent('listening'),
      ],
    },
    {
      name: 'listen start while listening says no state again',
      given: LISTENING,
      event: said(LISTEN_AUTO),
      then: { phase: 'open', state: 'listening' },
      commands: [count('client_message', 'listen'), steer('discard'), { c: 'uplink', audio: 'reset' }, up({ type: 'listen', state: 'start', mode: 'auto' })],
    },
    {
      name: 'listen stop: the encoder flushed, listen stop sent up, input ended, processing',
      given: LISTENING,
      event: said(LISTEN_STOP),
      then: { phase: 'open', state: 'processing', replyDueAt: T },
      commands: [
        count('client_message', 'listen'),
        { c: 'uplink', audio: 'flush' },
        up({ type: 'listen', state: 'stop' }),
        { c: 'input-ended', at: T },
        stateSent('processing'),
      ],
    },
    {
      name: 'abort while speaking: reply aborted, abort up, steer abort, ready',
      given: SPEAKING,
      event: said(ABORT),
      then: { phase: 'open', state: 'ready', discarding: true },
      commands: [count('client_message', 'abort'), ...ABORTED, stateSent('ready')],
    },
    {
      name: 'abort while processing: the reply to come is aborted too, ready',
      given: PROCESSING,
      event: said(ABORT),
      then: { phase: 'open', state: 'ready', discarding: true },
      commands: [count('client_message', 'abort'), ...ABORTED, stateSent('ready')],
    },
    {
      name: 'abort while ready aborts and says no state again',
      given: OPEN,
      event: said(ABORT),
      then: { phase: 'open', state: 'ready', discarding: true },
      commands: [count('client_message', 'abort'), ...ABORTED],
    },
    {
      name: 'mcp is passed upstream unchanged',
      given: OPEN,
      event: said({ type: 'mcp', payload: { jsonrpc: '2.0', id: 1, method: 'tools/list' } }),
      then: { phase: 'open', state: 'ready' },
      commands: [count('client_message', 'mcp'), up({ type: 'mcp', payload: { jsonrpc: '2.0', id: 1, method: 'tools/list' } })],
    },
    {
      name: 'playout becomes a playout command, not relayed',
      given: SPEAKING,
      event: said(PLAYOUT),
      then: { phase: 'open', state: 'speaking' },
      commands: [count('client_message', 'playout'), { c: 'playout', bufferedMs: 120, underruns: 2, playedMs: 4000 }],
    },
    {
      name: 'a bad message once open is a bad_message through the pipeline, and the session goes on',
      given: SPEAKING,
      event: garbled({ ok: false, reason: 'bad_field', detail: 'listen: state: invalid' }),
      then: { phase: 'open', state: 'speaking', lastClientAt: T },
      commands: [count('bad_message', 'bad_field'), send({ type: 'error', code: 'bad_message', message: 'listen: state: invalid' })],
    },
    {
      name: 'listen while connecting: hello_required (wait for the gateway\'s hello), through the pipeline',
      given: CONNECTING,
      event: said(LISTEN_AUTO),
      then: { phase: 'connecting', state: 'ready' },
      commands: [count('client_message', 'listen'), error('hello_required')],
    },
    {
      name: 'playout while connecting: hello_required',
      given: CONNECTING,
      event: said(PLAYOUT),
      then: { phase: 'connecting', state: 'ready' },
      commands: [count('client_message', 'playout'), error('hello_required')],
    },
    {
      name: 'listen while reconnecting: upstream_lost, nothing sent up',
      given: RECONNECTING,
      event: said(LISTEN_AUTO),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [count('client_message', 'listen'), error('upstream_lost')],
    },
    {
      name: 'text while reconnecting: upstream_lost, nothing sent up',
      given: RECONNECTING,
      event: said(TYPED),
      then: { phase: 'reconnecting', state: 'reconnecting', replyDueAt: 0 },
      commands: [count('client_message', 'text'), error('upstream_lost')],
    },
    {
      name: 'abort while reconnecting: what is held is discarded, nothing goes up',
      given: RECONNECTING,
      event: said(ABORT),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [count('client_message', 'abort'), steer('discard')],
    },
    {
      name: 'playout while reconnecting is still counted',
      given: RECONNECTING,
      event: said(PLAYOUT),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [count('client_message', 'playout'), { c: 'playout', bufferedMs: 120, underruns: 2, playedMs: 4000 }],
    },
    {
      name: 'a client message while ending is ignored',
      given: ENDING,
      event: said(LISTEN_AUTO),
      then: { phase: 'ending', state: 'ready' },
      commands: [],
    },
  ])('$name', check);
});

describe('decide: pings', () => {
  it.each<{ name: string; given: Partial<Conversation> }>([
    { name: 'connecting', given: CONNECTING },
    { name: 'open and ready', given: OPEN },
    { name: 'listening', given: LISTENING },
    { name: 'processing', given: PROCESSING },
    { name: 'speaking', given: SPEAKING },
    { name: 'reconnecting', given: RECONNECTING },
    { name: 'draining mid-reply', given: { ...SPEAKING, draining: true } },
  ])('a ping while $name is answered with a pong through the pipeline', ({ given: overrides }) => {
    const before = given(overrides);
    check({
      name: '',
      given: overrides,
      event: said({ type: 'ping', id: { n: [1, 'a'] } }, T + 5),
      then: { phase: before.phase, state: before.state, lastClientAt: T + 5 },
      commands: [count('client_message', 'ping'), send({ type: 'pong', id: { n: [1, 'a'] } })],
    });
  });

  it('a ping without an id is answered with a pong without one', () => {
    check({
      name: '',
      given: OPEN,
      event: said({ type: 'ping', id: undefined }),
      then: { phase: 'open', state: 'ready' },
      commands: [count('client_message', 'ping'), send({ type: 'pong', id: undefined })],
    });
  });
});

describe('decide: client audio', () => {
  it.each<Row>([
    {
      name: 'audio before hello: hello_required, straight to the socket',
      given: {},
      event: audio(OPUS_PACKET, 9),
      then: { phase: 'awaiting-hello', state: 'ready', lastClientAt: 9 },
      commands: [error('hello_required', true)],
    },
    {
      name: 'audio while connecting: hello_required, through the pipeline',
      given: CONNECTING,
      event: audio(OPUS_PACKET),
      then: { phase: 'connecting', state: 'ready' },
      commands: [error('hello_required')],
    },
    {
      name: 'audio while reconnecting is dropped without a word (the state says why), but keeps the session alive',
      given: RECONNECTING,
      event: audio(OPUS_PACKET, T + 3),
      then: { phase: 'reconnecting', state: 'reconnecting', lastClientAt: T + 3 },
      commands: [],
    },
    {
      name: 'audio while ending is ignored',
      given: ENDING,
      event: audio(OPUS_PACKET),
      then: { phase: 'ending', state: 'ready' },
      commands: [],
    },
    {
      name: 'a valid Opus packet goes up',
      given: LISTENING,
      event: audio(OPUS_PACKET, T + 3),
      then: { phase: 'open', state: 'listening', lastClientAt: T + 3 },
      commands: [{ c: 'uplink', audio: Buffer.from(OPUS_PACKET) }],
    },
    {
      name: 'an empty frame on an Opus uplink is bad_audio',
      given: LISTENING,
      event: audio([]),
      then: { phase: 'open', state: 'listening' },
      commands: [error('bad_audio')],
    },
    {
      name: 'pcm16 of an odd length is bad_audio',
      given: { ...LISTENING, hello: HELLO_PCM_UP },
      event: audio([1, 2, 3]),
      then: { phase: 'open', state: 'listening' },
      commands: [error('bad_audio')],
    },
    {
      name: 'pcm16 of whole samples goes up',
      given: { ...LISTENING, hello: HELLO_PCM_UP },
      event: audio([1, 2, 3, 4]),
      then: { phase: 'open', state: 'listening' },
      commands: [{ c: 'uplink', audio: Buffer.from([1, 2, 3, 4]) }],
    },
  ])('$name', check);
});

describe('decide: what the upstream says', () => {
  it.each<Row>([
    {
      name: 'tts start: the gate reopens, the reply starts, speaking',
      given: PROCESSING,
      event: heard(TTS_START, T + 7),
      then: { phase: 'open', state: 'speaking', discarding: false, lastUpstreamAt: T + 7 },
      commands: [steer('reply-start'), reply('started'), stateSent('speaking')],
    },
    {
      name: 'tts sentence_start while speaking: assistant_text',
      given: SPEAKING,
      event: heard(TTS_SENTENCE),
      then: { phase: 'open', state: 'speaking' },
      commands: [send({ type: 'assistant_text', text: 'It is noon.' })],
    },
    {
      name: 'tts stop while speaking: reply-end steered, reply complete, ready',
      given: SPEAKING,
      event: heard(TTS_STOP),
      then: { phase: 'open', state: 'ready', discarding: false },
      commands: [steer('reply-end'), reply('complete'), stateSent('ready')],
    },
    {
      name: 'tts sentence_start of an aborted reply: no assistant_text',
      given: { ...OPEN, discarding: true },
      event: heard(TTS_SENTENCE, T + 7),
      then: { phase: 'open', state: 'ready', discarding: true, lastUpstreamAt: T + 7 },
      commands: [],
    },
    {
      name: 'tts stop of an aborted reply: reply-end steered, no completion, no state',
      given: { ...OPEN, discarding: true },
      event: heard(TTS_STOP),
      then: { phase: 'open', state: 'ready', discarding: false },
      commands: [steer('reply-end')],
    },
    {
      name: 'tts stop of a reply cut by barge-in: reply-end steered, still listening',
      given: { ...LISTENING, discarding: true },
      event: heard(TTS_STOP),
      then: { phase: 'open', state: 'listening', discarding: false },
      commands: [steer('reply-end')],
    },
    {
      name: 'tts start after an abort: the new reply is the client\'s again',
      given: { ...PROCESSING, discarding: true },
      event: heard(TTS_START),
      then: { phase: 'open', state: 'speaking', discarding: false },
      commands: [steer('reply-start'), reply('started'), stateSent('speaking')],
    },
    {
      name: 'stt while listening: user_text, and the server\'s VAD ends the input',
      given: LISTENING,
      event: heard({ type: 'stt', text: 'what time is it' }),
      then: { phase: 'open', state: 'processing', replyDueAt: T },
      commands: [send({ type: 'user_text', text: 'what time is it' }), { c: 'input-ended', at: T }, stateSent('processing')],
    },
    {
      name: 'stt after listen stop: user_text only',
      given: PROCESSING,
      event: heard({ type: 'stt', text: 'what time is it' }, T + 9),
      then: { phase: 'open', state: 'processing', replyDueAt: T - 1000 },
      commands: [send({ type: 'user_text', text: 'what time is it' })],
    },
    {
      name: 'llm: emotion with its emoji',
      given: PROCESSING,
      event: heard({ type: 'llm', text: '😊', emotion: 'happy' }),
      then: { phase: 'open', state: 'processing' },
      commands: [send({ type: 'emotion', emotion: 'happy', emoji: '😊' })],
    },
    {
      name: 'mcp from the upstream goes to the client',
      given: OPEN,
      event: heard({ type: 'mcp', payload: { jsonrpc: '2.0', method: 'tools/call' } }),
      then: { phase: 'open', state: 'ready' },
      commands: [send({ type: 'mcp', payload: { jsonrpc: '2.0', method: 'tools/call' } })],
    },
    {
      name: 'a rare type is counted by its name',
      given: OPEN,
      event: heard({ type: 'other', original: 'iot', body: { type: 'iot' } }),
      then: { phase: 'open', state: 'ready' },
      commands: [count('upstream_unknown', 'iot'), log('debug', 'upstream message of a type not acted on')],
    },
    {
      name: 'an unknown type is counted as unknown (a bounded label)',
      given: OPEN,
      event: heard({ type: 'other', original: 'x-anything', body: { type: 'x-anything' } }),
      then: { phase: 'open', state: 'ready' },
      commands: [count('upstream_unknown', 'unknown'), log('debug', 'upstream message of a type not acted on')],
    },
    {
      name: 'an invalid upstream message is counted and skipped',
      given: SPEAKING,
      event: { kind: 'upstream-invalid', detail: 'tts: bad state' },
      then: { phase: 'open', state: 'speaking', lastUpstreamAt: T - 1000 },
      commands: [count('bad_message', 'upstream_invalid'), log('debug', 'upstream message skipped')],
    },
    {
      name: 'an upstream message while ending is ignored',
      given: { ...ENDING, state: 'speaking' },
      event: heard(TTS_STOP),
      then: { phase: 'ending', state: 'speaking' },
      commands: [],
    },
  ])('$name', check);

  it('after an abort, the rest of that reply is suppressed and the next one is heard', () => {
    const { state, commands } = play(given(SPEAKING), [
      said(ABORT),
      heard(TTS_SENTENCE),
      heard(TTS_STOP),
      said(TYPED),
      heard(TTS_START),
      heard({ type: 'tts', state: 'sentence_start', text: 'Next.' }),
      heard(TTS_STOP),
    ]);
    expect(commands).toEqual([
      [count('client_message', 'abort'), ...ABORTED, stateSent('ready')],
      [],
      [steer('reply-end')],
      [count('client_message', 'text'), steer('discard'), up({ type: 'listen', state: 'detect', text: 'what time is it' }), { c: 'input-ended', at: T }, stateSent('processing')],
      [steer('reply-start'), reply('started'), stateSent('speaking')],
      [send({ type: 'assistant_text', text: 'Next.' })],
      [steer('reply-end'), reply('complete'), stateSent('ready')],
    ]);
    expect(state).toMatchObject({ phase: 'open', state: 'ready', discarding: false });
  });
});

describe('decide: upstream failures', () => {
  it.each<Row>([
    {
      name: 'while connecting: upstream_unavailable, then close 4002 after it',
      given: CONNECTING,
      event: failed(1, 'connect'),
      then: { phase: 'ending', state: 'ready', endingOutcome: 'upstream_unavailable', connection: 2, reconnecting: false },
      commands: [
        count('upstream_error', 'connect'),
        { c: 'disconnect' },
        log('warn', 'upstream unavailable'),
        error('upstream_unavailable'),
        close(CloseCode.upstreamUnavailable, 'upstream unavailable'),
      ],
    },
    {
      name: "while connecting, the device could not be provisioned (OTA or store): upstream_unavailable, close 4002",
      given: CONNECTING,
      event: failed(1, 'provision'),
      then: { phase: 'ending', state: 'ready', endingOutcome: 'upstream_unavailable', connection: 2 },
      commands: [
        count('upstream_error', 'provision'),
        { c: 'disconnect' },
        log('warn', 'upstream unavailable'),
        error('upstream_unavailable'),
        close(CloseCode.upstreamUnavailable, 'upstream unavailable'),
      ],
    },
    {
      name: 'while connecting, nobody entered the activation code in time: activation_timeout, close 4002',
      given: CONNECTING,
      event: failed(1, 'activation_timeout'),
      then: { phase: 'ending', state: 'ready', endingOutcome: 'activation_timeout', connection: 2 },
      commands: [
        count('upstream_error', 'activation_timeout'),
        { c: 'disconnect' },
        log('warn', 'device not activated in time'),
        error('activation_timeout'),
        close(CloseCode.upstreamUnavailable, 'activation timeout'),
      ],
    },
    {
      name: 'while reconnecting, the activation timed out: no further attempt, the episode counted as failed',
      given: RECONNECTING,
      event: failed(3, 'activation_timeout'),
      then: { phase: 'ending', state: 'reconnecting', reconnecting: false, endingOutcome: 'activation_timeout', connection: 4 },
      commands: [
        count('upstream_error', 'activation_timeout'),
        { c: 'disconnect' },
        log('warn', 'device not activated in time'),
        count('reconnect', 'failed'),
        error('activation_timeout'),
        close(CloseCode.upstreamUnavailable, 'activation timeout'),
      ],
    },
    {
      name: 'while open mid-reply: upstream_lost, the reply ends, reconnecting, the first reconnect in baseMs',
      given: SPEAKING,
      event: failed(1, 'closed'),
      then: { phase: 'reconnecting', state: 'reconnecting', reconnecting: true, reconnectAttempts: 1, connection: 2, discarding: false },
      commands: [...lost('closed'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'while open after an abort: discarding ends with the connection',
      given: { ...OPEN, discarding: true },
      event: failed(1, 'socket'),
      then: { phase: 'reconnecting', state: 'reconnecting', discarding: false, reconnectAttempts: 1 },
      commands: [...lost('socket'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'a reconnect attempt that fails: logged, the next attempt after twice the delay',
      given: RECONNECTING,
      event: failed(3, 'connect'),
      then: { phase: 'reconnecting', state: 'reconnecting', reconnecting: true, reconnectAttempts: 2, connection: 4 },
      commands: [count('upstream_error', 'connect'), { c: 'disconnect' }, log('warn', 'upstream reconnect failed'), { c: 'reconnect-in', ms: 200 }],
    },
    {
      name: 'a later attempt waits no longer than maxMs',
      given: { ...RECONNECTING, reconnectAttempts: 5 },
      settings: { reconnect: { attempts: 10, baseMs: 100, maxMs: 1000 } },
      event: failed(3, 'connect'),
      then: { phase: 'reconnecting', state: 'reconnecting', reconnectAttempts: 6 },
      commands: [count('upstream_error', 'connect'), { c: 'disconnect' }, log('warn', 'upstream reconnect failed'), { c: 'reconnect-in', ms: 1000 }],
    },
    {
      name: 'the attempts exhausted: counted as failed, upstream_unavailable, close 4002 as upstream_lost',
      given: { ...RECONNECTING, reconnectAttempts: 3 },
      event: failed(3, 'connect'),
      then: { phase: 'ending', state: 'reconnecting', reconnecting: false, endingOutcome: 'upstream_lost', connection: 4 },
      commands: [
        count('upstream_error', 'connect'),
        { c: 'disconnect' },
        log('warn', 'upstream reconnect failed'),
        count('reconnect', 'failed'),
        error('upstream_unavailable'),
        close(CloseCode.upstreamUnavailable, 'upstream lost'),
      ],
    },
    {
      name: 'zero attempts configured: lost, then given up at once',
      given: SPEAKING,
      settings: { reconnect: { attempts: 0, baseMs: 100, maxMs: 1000 } },
      event: failed(1, 'closed'),
      then: { phase: 'ending', state: 'reconnecting', reconnecting: false, endingOutcome: 'upstream_lost' },
      commands: [...lost('closed'), count('reconnect', 'failed'), error('upstream_unavailable'), close(CloseCode.upstreamUnavailable, 'upstream lost')],
    },
    {
      name: 'lost while draining mid-reply: the reconnecting state is the last word, closed 1001',
      given: { ...SPEAKING, draining: true },
      event: failed(1, 'closed'),
      then: { phase: 'ending', state: 'reconnecting', endingOutcome: 'shutdown', reconnectAttempts: 0 },
      commands: [...lost('closed'), close(CloseCode.goingAway, 'gateway shutting down')],
    },
    {
      name: 'a stale failure report (an older connection) is ignored',
      given: { ...SPEAKING, connection: 2 },
      event: failed(1, 'closed'),
      then: { phase: 'open', state: 'speaking', connection: 2, reconnectAttempts: 0 },
      commands: [],
    },
    {
      name: 'a stale failure report while reconnecting is ignored',
      given: RECONNECTING,
      event: failed(2, 'closed'),
      then: { phase: 'reconnecting', state: 'reconnecting', connection: 3, reconnectAttempts: 1 },
      commands: [],
    },
    {
      name: 'a failure while ending is ignored',
      given: { ...ENDING, connection: 1 },
      event: failed(1, 'closed'),
      then: { phase: 'ending', state: 'ready', connection: 1 },
      commands: [],
    },
    {
      name: 'the reconnect timer while reconnecting: a fresh connection',
      given: { ...RECONNECTING, connection: 2, upstreamUnsent: 700, upstreamProgressAt: 5 },
      event: { kind: 'reconnect', now: T + 100 },
      then: { phase: 'reconnecting', state: 'reconnecting', connection: 3, upstreamUnsent: 0, upstreamProgressAt: T + 100 },
      commands: [{ c: 'connect', connection: 3 }],
    },
    {
      name: 'a reconnect timer once open again is ignored',
      given: OPEN,
      event: { kind: 'reconnect', now: T },
      then: { phase: 'open', state: 'ready', connection: 1 },
      commands: [],
    },
    {
      name: 'sent-up with more than half the buffer unsent: one buffer overflow, and the upstream fails as not_reading',
      given: SPEAKING,
      event: { kind: 'sent-up', connection: 1, unsent: 501 },
      then: { phase: 'reconnecting', state: 'reconnecting', connection: 2, reconnectAttempts: 1 },
      commands: [count('buffer_overflow', 'upstream'), ...lost('not_reading'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'sent-up with exactly half the buffer unsent is fine',
      given: SPEAKING,
      event: { kind: 'sent-up', connection: 1, unsent: 500 },
      then: { phase: 'open', state: 'speaking', connection: 1 },
      commands: [],
    },
  ])('$name', check);

  it('tells the client the fault in the protocol\'s terms, never the upstream\'s address or words', () => {
    for (const given_ of [CONNECTING, SPEAKING]) {
      const { commands } = decide(given(given_), failed(1, 'socket', 'connect ECONNREFUSED 10.1.2.3:8000'), SETTINGS);
      const errors = commands.flatMap((c) => (c.c === 'send' && c.message.type === 'error' ? [c.message.message] : []));
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatch(/^the voice service /);
      expect(errors[0]).not.toMatch(/ECONNREFUSED|10\.1\.2\.3/);
    }
  });

  it('a failure found, then the socket\'s own error for the same connection: handled once', () => {
    const { state, commands } = play(given(SPEAKING), [{ kind: 'sent-up', connection: 1, unsent: 900 }, failed(1, 'socket')]);
    expect(commands[0]).toEqual([count('buffer_overflow', 'upstream'), ...lost('not_reading'), { c: 'reconnect-in', ms: 100 }]);
    expect(commands[1]).toEqual([]);
    expect(state).toMatchObject({ phase: 'reconnecting', reconnectAttempts: 1, connection: 2 });
  });

  it('lost, reconnected, recovered: one episode, counted once as recovered', () => {
    const { state, commands } = play(given(SPEAKING), [failed(1, 'closed'), { kind: 'reconnect', now: T + 100 }, heard(UP_HELLO, T + 150)]);
    expect(commands[1]).toEqual([{ c: 'connect', connection: 3 }]);
    expect(commands[2]).toEqual([{ c: 'connected', now: T + 150 }, count('reconnect', 'recovered'), log('info', 'upstream recovered'), stateSent('ready')]);
    expect(state).toMatchObject({ phase: 'open', state: 'ready', reconnecting: false, reconnectAttempts: 0, connection: 3 });
  });

  // The upstream-not-reading fault is counted once per connection, like the fault it reports. One turn
  // can send two messages up (barge-in: abort + listen start; text over a reply: abort + detect), so two
  // sent-ups of the same full socket queue up: the second is about a connection already given up.
  it('sent-up twice for the same full socket: counted once, the upstream failed once', () => {
    const { state, commands } = play(given(SPEAKING), [
      { kind: 'sent-up', connection: 1, unsent: 900 },
      { kind: 'sent-up', connection: 1, unsent: 900 },
    ]);
    expect(commands[0]).toEqual([count('buffer_overflow', 'upstream'), ...lost('not_reading'), { c: 'reconnect-in', ms: 100 }]);
    expect(commands[1]).toEqual([]);
    expect(state).toMatchObject({ phase: 'reconnecting', state: 'reconnecting', reconnectAttempts: 1, connection: 2 });
  });

  // The same fault, as the client sees it: with one attempt configured, a second sent-up must not spend it
  // and close 4002 ("lost and not recovered") before a single reconnect has been tried.
  it('sent-up twice with one reconnect attempt configured: the session still gets its reconnect', () => {
    const settings: Settings = { ...SETTINGS, reconnect: { attempts: 1, baseMs: 100, maxMs: 1000 } };
    const { state, commands } = play(given(SPEAKING), [{ kind: 'sent-up', connection: 1, unsent: 900 }, { kind: 'sent-up', connection: 1, unsent: 900 }], settings);
    expect(commands[1]).not.toContainEqual(close(CloseCode.upstreamUnavailable, 'upstream lost'));
    expect(state.phase).toBe('reconnecting');
  });
});

describe('decide: activation', () => {
  const activation: ConversationEvent = { kind: 'activation', code: '123456', message: 'enter it at the console' };

  it.each<Row>([
    {
      name: 'while connecting: the code goes to the client, before its hello',
      given: CONNECTING,
      event: activation,
      then: { phase: 'connecting', state: 'ready' },
      commands: [log('info', 'activation code sent to the client'), send({ type: 'activation', code: '123456', message: 'enter it at the console' })],
    },
    {
      name: 'while reconnecting: the code goes to the client too',
      given: RECONNECTING,
      event: activation,
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [log('info', 'activation code sent to the client'), send({ type: 'activation', code: '123456', message: 'enter it at the console' })],
    },
    { name: 'while open: stale, ignored', given: OPEN, event: activation, then: { phase: 'open', state: 'ready' }, commands: [] },
    { name: 'while ending: ignored', given: ENDING, event: activation, then: { phase: 'ending', state: 'ready' }, commands: [] },
  ])('$name', check);
});

describe('decide: ticks', () => {
  it.each<Row>([
    {
      name: 'idle past idleTimeoutMs since either side was heard: close 1000 idle',
      given: { ...OPEN, lastClientAt: 1000, lastUpstreamAt: 1000, upstreamProgressAt: 1000 },
      event: tick(61_001),
      then: { phase: 'ending', state: 'ready', endingOutcome: 'idle', upstreamProgressAt: 61_001 },
      commands: [close(CloseCode.normal, 'idle')],
    },
    {
      name: 'idle exactly idleTimeoutMs is not yet idle',
      given: { ...OPEN, lastClientAt: 1000, lastUpstreamAt: 1000, upstreamProgressAt: 1000 },
      event: tick(61_000),
      then: { phase: 'open', state: 'ready' },
      commands: [],
    },
    {
      name: 'uplink audio that went up lately keeps the session, though no decision saw it',
      given: { ...OPEN, lastClientAt: 1000, lastUpstreamAt: 1000, upstreamProgressAt: 1000 },
      event: tick(61_001, 0, 0, 30_000),
      then: { phase: 'open', state: 'ready' },
      commands: [],
    },
    {
      name: 'a client heard lately keeps the session',
      given: { ...OPEN, lastClientAt: 30_000, lastUpstreamAt: 1000, upstreamProgressAt: 1000 },
      event: tick(61_001),
      then: { phase: 'open', state: 'ready' },
      commands: [],
    },
    {
      name: 'upstream audio heard lately (audioAt) counts as activity against idle',
      given: { ...OPEN, lastClientAt: 1000, lastUpstreamAt: 1000, upstreamProgressAt: 1000 },
      event: tick(61_001, 30_000),
      then: { phase: 'open', state: 'ready' },
      commands: [],
    },
    {
      name: 'listening is not a reply: a silent session idles out',
      given: { ...LISTENING, lastClientAt: 1000, lastUpstreamAt: 1000, upstreamProgressAt: 1000 },
      event: tick(61_001),
      then: { phase: 'ending', state: 'listening', endingOutcome: 'idle' },
      commands: [close(CloseCode.normal, 'idle')],
    },
    {
      name: 'speaking with no word from the upstream past stallTimeoutMs: the upstream fails as stall',
      given: { ...SPEAKING, lastUpstreamAt: 1000, replyDueAt: 500, lastClientAt: 1000, upstreamProgressAt: 1000 },
      event: tick(6001),
      then: { phase: 'reconnecting', state: 'reconnecting', reconnectAttempts: 1, connection: 2 },
      commands: [...lost('stall'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'speaking, silent exactly stallTimeoutMs: not yet a stall',
      given: { ...SPEAKING, lastUpstreamAt: 1000, replyDueAt: 500, lastClientAt: 1000, upstreamProgressAt: 1000 },
      event: tick(6000),
      then: { phase: 'open', state: 'speaking' },
      commands: [],
    },
    {
      name: 'speaking with upstream audio lately (audioAt): no stall',
      given: { ...SPEAKING, lastUpstreamAt: 1000, replyDueAt: 500, lastClientAt: 1000, upstreamProgressAt: 1000 },
      event: tick(6001, 4000),
      then: { phase: 'open', state: 'speaking' },
      commands: [],
    },
    {
      name: 'processing: the reply is due from when the input ended, so no stall yet',
      given: { ...PROCESSING, lastUpstreamAt: 1000, replyDueAt: 3000, lastClientAt: 3000, upstreamProgressAt: 1000 },
      event: tick(8000),
      then: { phase: 'open', state: 'processing' },
      commands: [],
    },
    {
      name: 'processing past stallTimeoutMs since the input ended: stall',
      given: { ...PROCESSING, lastUpstreamAt: 1000, replyDueAt: 3000, lastClientAt: 3000, upstreamProgressAt: 1000 },
      event: tick(8001),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [...lost('stall'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'a client chatting mid-reply does not hide a stall',
      given: { ...SPEAKING, lastUpstreamAt: 1000, replyDueAt: 500, lastClientAt: 6000, upstreamProgressAt: 1000 },
      event: tick(6001),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [...lost('stall'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'the upstream not taking its unsent bytes for stallTimeoutMs: not_reading',
      given: { ...OPEN, lastClientAt: 5000, lastUpstreamAt: 5000, upstreamUnsent: 200, upstreamProgressAt: 1000 },
      event: tick(6001, 0, 200),
      then: { phase: 'reconnecting', state: 'reconnecting', reconnectAttempts: 1, connection: 2 },
      commands: [...lost('not_reading'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'unsent bytes growing is no progress either',
      given: { ...OPEN, lastClientAt: 5000, lastUpstreamAt: 5000, upstreamUnsent: 200, upstreamProgressAt: 1000 },
      event: tick(6001, 0, 300),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [...lost('not_reading'), { c: 'reconnect-in', ms: 100 }],
    },
    {
      name: 'unsent bytes shrinking is progress: remembered, nothing else',
      given: { ...OPEN, lastClientAt: 5000, lastUpstreamAt: 5000, upstreamUnsent: 300, upstreamProgressAt: 1000 },
      event: tick(6001, 0, 200),
      then: { phase: 'open', state: 'ready', upstreamUnsent: 200, upstreamProgressAt: 6001 },
      commands: [],
    },
    {
      name: 'unsent bytes that stay put within stallTimeoutMs: remembered, no progress marked',
      given: { ...OPEN, lastClientAt: 5000, lastUpstreamAt: 5000, upstreamUnsent: 200, upstreamProgressAt: 1000 },
      event: tick(6000, 0, 200),
      then: { phase: 'open', state: 'ready', upstreamUnsent: 200, upstreamProgressAt: 1000 },
      commands: [],
    },
    {
      name: 'a tick while connecting does nothing',
      given: { ...CONNECTING, lastClientAt: 0 },
      event: tick(1_000_000, 0, 900),
      then: { phase: 'connecting', state: 'ready', upstreamUnsent: 0 },
      commands: [],
    },
    {
      name: 'a tick while reconnecting does nothing (no idle, no stall)',
      given: { ...RECONNECTING, lastClientAt: 0, lastUpstreamAt: 0, upstreamProgressAt: 0 },
      event: tick(1_000_000, 0, 900),
      then: { phase: 'reconnecting', state: 'reconnecting' },
      commands: [],
    },
    {
      name: 'a tick while ending does nothing',
      given: { ...ENDING, lastClientAt: 0, lastUpstreamAt: 0 },
      event: tick(1_000_000),
      then: { phase: 'ending', state: 'ready' },
      commands: [],
    },
  ])('$name', check);
});

describe('decide: shutdown', () => {
  it.each<Row>([
    {
      name: 'draining while ready: close 1001 at once',
      given: OPEN,
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'ending', state: 'ready', draining: true, endingOutcome: 'shutdown' },
      commands: [close(CloseCode.goingAway, 'gateway shutting down')],
    },
    {
      name: 'draining while listening: close 1001 at once (no reply in progress)',
      given: LISTENING,
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'ending', state: 'listening', draining: true, endingOutcome: 'shutdown' },
      commands: [close(CloseCode.goingAway, 'gateway shutting down')],
    },
    {
      name: 'draining while speaking: the reply goes on',
      given: SPEAKING,
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'open', state: 'speaking', draining: true },
      commands: [],
    },
    {
      name: 'draining while processing: the reply to come goes on',
      given: PROCESSING,
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'open', state: 'processing', draining: true },
      commands: [],
    },
    {
      name: 'draining, the reply ends: close 1001 after its state ready',
      given: { ...SPEAKING, draining: true },
      event: heard(TTS_STOP),
      then: { phase: 'ending', state: 'ready', endingOutcome: 'shutdown' },
      commands: [steer('reply-end'), reply('complete'), stateSent('ready'), close(CloseCode.goingAway, 'gateway shutting down')],
    },
    {
      name: 'draining, the client aborts the reply: close 1001 after its state ready',
      given: { ...SPEAKING, draining: true },
      event: said(ABORT),
      then: { phase: 'ending', state: 'ready', endingOutcome: 'shutdown' },
      commands: [count('client_message', 'abort'), ...ABORTED, stateSent('ready'), close(CloseCode.goingAway, 'gateway shutting down')],
    },
    {
      name: 'draining while connecting: close 1001 (the hello is in, so after what is queued)',
      given: CONNECTING,
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'ending', state: 'ready', draining: true, endingOutcome: 'shutdown' },
      commands: [close(CloseCode.goingAway, 'gateway shutting down')],
    },
    {
      name: 'draining before hello: nothing is queued, the socket ends 1001 now',
      given: {},
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'closed', state: 'ready', draining: true },
      commands: [count('close_code', '1001'), finish('shutdown', 1001, 'shutdown'), endSocket(1001, 'gateway shutting down')],
    },
    {
      name: 'draining while already ending: nothing more',
      given: ENDING,
      event: { kind: 'shutdown', graceful: true },
      then: { phase: 'ending', state: 'ready', endingOutcome: 'idle' },
      commands: [],
    },
    {
      name: 'a non-graceful shutdown mid-reply abandons with 1001',
      given: SPEAKING,
      event: { kind: 'shutdown', graceful: false },
      then: { phase: 'closed', state: 'speaking' },
      commands: [count('close_code', '1001'), finish('shutdown', 1001, 'shutdown'), endSocket(1001, 'gateway shutting down')],
    },
    {
      name: 'a non-graceful shutdown after draining\'s close abandons the queue too',
      given: { ...ENDING, draining: true, endingOutcome: 'shutdown' },
      event: { kind: 'shutdown', graceful: false },
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1001'), finish('shutdown', 1001, 'shutdown'), endSocket(1001, 'gateway shutting down')],
    },
    {
      name: 'a non-graceful shutdown while reconnecting: the episode is abandoned',
      given: RECONNECTING,
      event: { kind: 'shutdown', graceful: false },
      then: { phase: 'closed', state: 'reconnecting', reconnecting: false },
      commands: [count('reconnect', 'abandoned'), count('close_code', '1001'), finish('shutdown', 1001, 'shutdown'), endSocket(1001, 'gateway shutting down')],
    },
  ])('$name', check);
});

describe('decide: endings', () => {
  it.each<Row>([
    {
      name: 'the client closes 1000: normal',
      given: SPEAKING,
      event: closedBy(1000),
      then: { phase: 'closed', state: 'speaking' },
      commands: [count('close_code', '1000'), finish('normal', 1000, 'client_gone')],
    },
    {
      name: 'the client closes 1001 (going away): normal',
      given: OPEN,
      event: closedBy(1001),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1001'), finish('normal', 1001, 'client_gone')],
    },
    {
      name: 'the client closes without a code (1005): normal',
      given: OPEN,
      event: closedBy(1005),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1005'), finish('normal', 1005, 'client_gone')],
    },
    {
      name: 'the connection drops (1006): client_gone',
      given: OPEN,
      event: closedBy(1006),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1006'), finish('client_gone', 1006, 'client_gone')],
    },
    {
      name: 'the client closes with its own code (4000): client_gone',
      given: OPEN,
      event: closedBy(4000),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '4000'), finish('client_gone', 4000, 'client_gone')],
    },
    {
      name: 'the client closes before hello: finished, no socket end (it is closed already)',
      given: {},
      event: closedBy(1000),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1000'), finish('normal', 1000, 'client_gone')],
    },
    {
      name: 'the client closes while reconnecting: the episode is abandoned',
      given: RECONNECTING,
      event: closedBy(1000),
      then: { phase: 'closed', state: 'reconnecting', reconnecting: false },
      commands: [count('reconnect', 'abandoned'), count('close_code', '1000'), finish('normal', 1000, 'client_gone')],
    },
    {
      name: 'the socket closes after the gateway\'s close: the outcome is the one ending chose',
      given: { ...ENDING, endingOutcome: 'idle' },
      event: closedBy(1000),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1000'), finish('idle', 1000, 'client_gone')],
    },
    {
      name: 'the socket closes after an upstream_lost close: the reply was cut by the upstream',
      given: { ...ENDING, state: 'reconnecting', endingOutcome: 'upstream_lost' },
      event: closedBy(4002),
      then: { phase: 'closed', state: 'reconnecting' },
      commands: [count('close_code', '4002'), finish('upstream_lost', 4002, 'upstream_lost')],
    },
    {
      name: 'the socket closes after a drain\'s close: shutdown',
      given: { ...ENDING, endingOutcome: 'shutdown', draining: true },
      event: closedBy(1001),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('close_code', '1001'), finish('shutdown', 1001, 'shutdown')],
    },
    {
      name: 'cut for a frame far too large: too_large, with a bad_message count',
      given: SPEAKING,
      event: closedBy(1006, true),
      then: { phase: 'closed', state: 'speaking' },
      commands: [count('bad_message', 'too_large'), count('close_code', '1006'), finish('too_large', 1006, 'client_gone')],
    },
    {
      name: 'cut for a frame far too large while ending: too_large still',
      given: ENDING,
      event: closedBy(1006, true),
      then: { phase: 'closed', state: 'ready' },
      commands: [count('bad_message', 'too_large'), count('close_code', '1006'), finish('too_large', 1006, 'client_gone')],
    },
    {
      name: 'an oversized frame: bad_message counted, the socket ends 1009 now',
      given: SPEAKING,
      event: { kind: 'client-oversized', bytes: 70_000 },
      then: { phase: 'closed', state: 'speaking' },
      commands: [
        count('bad_message', 'too_large'),
        count('close_code', '1009'),
        finish('too_large', CloseCode.tooBig, 'client_gone'),
        endSocket(1009, 'frame of 70000 bytes is over the 65536-byte limit'),
      ],
    },
    {
      name: 'an oversized frame before hello: 1009 too',
      given: {},
      event: { kind: 'client-oversized', bytes: 70_000 },
      then: { phase: 'closed', state: 'ready' },
      commands: [
        count('bad_message', 'too_large'),
        count('close_code', '1009'),
        finish('too_large', 1009, 'client_gone'),
        endSocket(1009, 'frame of 70000 bytes is over the 65536-byte limit'),
      ],
    },
    {
      name: 'a client too slow: the socket ends 4003 now',
      given: SPEAKING,
      event: { kind: 'too-slow' },
      then: { phase: 'closed', state: 'speaking' },
      commands: [count('close_code', '4003'), finish('too_slow', CloseCode.tooSlow, 'client_gone'), endSocket(4003, 'client too slow')],
    },
    {
      name: 'the session failed: internal error straight to the socket, then ends 1011',
      given: SPEAKING,
      event: { kind: 'failed' },
      then: { phase: 'closed', state: 'speaking' },
      commands: [
        error('internal', true),
        count('close_code', '1011'),
        finish('internal', CloseCode.internal, 'client_gone'),
        endSocket(1011, 'internal error'),
      ],
    },
  ])('$name', check);
});

describe('decide: a closed conversation', () => {
  const CLOSED: Partial<Conversation> = { ...SPEAKING, phase: 'closed', reconnecting: true, connection: 1 };
  it.each<{ name: string; event: ConversationEvent }>([
    { name: 'hello', event: said(HELLO) },
    { name: 'listen', event: said(LISTEN_AUTO) },
    { name: 'ping', event: said(PING) },
    { name: 'a bad message', event: garbled({ ok: false, reason: 'no_type', detail: 'a message needs a string "type"' }) },
    { name: 'audio', event: audio(OPUS_PACKET) },
    { name: 'an oversized frame', event: { kind: 'client-oversized', bytes: 70_000 } },
    { name: 'the client closing', event: closedBy(1000) },
    { name: 'the client cut for a frame too large', event: closedBy(1006, true) },
    { name: 'the hello timeout', event: { kind: 'hello-timeout' } },
    { name: 'a tick', event: tick(10_000_000, 0, 900) },
    { name: 'the reconnect timer', event: { kind: 'reconnect', now: T } },
    { name: 'too slow', event: { kind: 'too-slow' } },
    { name: 'a graceful shutdown', event: { kind: 'shutdown', graceful: true } },
    { name: 'a shutdown now', event: { kind: 'shutdown', graceful: false } },
    { name: 'sent-up', event: { kind: 'sent-up', connection: 1, unsent: 900 } },
    { name: 'an upstream failure', event: failed(1) },
    { name: 'an upstream message', event: heard(TTS_STOP) },
    { name: 'an invalid upstream message', event: { kind: 'upstream-invalid', detail: 'x' } },
    { name: 'a failure', event: { kind: 'failed' } },
  ])('ignores $name', ({ event }) => {
    const before = given(CLOSED);
    const { state, commands } = decide(before, event, SETTINGS);
    expect(commands).toEqual([]);
    expect(state).toEqual(before);
  });
});

describe('decide: a whole session', () => {
  it('hello, a spoken turn, a reply, and the client leaving', () => {
    const { state, commands } = play(initialConversation(0), [
      said(HELLO, 10),
      heard(UP_HELLO, 20),
      said(LISTEN_AUTO, 30),
      audio(OPUS_PACKET, 40),
      heard({ type: 'stt', text: 'hi' }, 50),
      heard(TTS_START, 60),
      heard(TTS_SENTENCE, 70),
      heard(TTS_STOP, 80),
      closedBy(1000),
    ]);
    expect(commands).toEqual([
      [count('client_message', 'hello'), { c: 'open', hello: HELLO, connection: 1 }],
      [
        { c: 'connected', now: 20 },
        send({ type: 'hello', version: 1, sessionId: 'session-1', downlink: HELLO.downlink, uplink: HELLO.uplink, pacing: HELLO.pacing }),
        stateSent('ready'),
        log('info', 'session open'),
      ],
      [count('client_message', 'listen'), steer('discard'), { c: 'uplink', audio: 'reset' }, up({ type: 'listen', state: 'start', mode: 'auto' }), stateSent('listening')],
      [{ c: 'uplink', audio: Buffer.from(OPUS_PACKET) }],
      [send({ type: 'user_text', text: 'hi' }), { c: 'input-ended', at: 50 }, stateSent('processing')],
      [steer('reply-start'), reply('started'), stateSent('speaking')],
      [send({ type: 'assistant_text', text: 'It is noon.' })],
      [steer('reply-end'), reply('complete'), stateSent('ready')],
      [count('close_code', '1000'), finish('normal', 1000, 'client_gone')],
    ]);
    expect(state).toMatchObject({ phase: 'closed', state: 'ready', connection: 1, lastClientAt: 40, lastUpstreamAt: 80, replyDueAt: 50 });
  });
});
