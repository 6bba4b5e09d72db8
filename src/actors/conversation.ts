import { XIAOZHI_DEFAULT_RATE } from '../protocol/audio.ts';
import {
  CloseCode,
  negotiate,
  PROTOCOL_VERSION,
  uplinkAudioProblem,
  type ClientHello,
  type ClientParse,
  type ErrorCode,
  type ServerMessage,
  type SessionState,
} from '../protocol/client.ts';
import type { ServerMessage as XiaozhiMessage } from '../protocol/xiaozhi.ts';
import type { ProvisionFault } from '../identity/ota.ts';
import type { UpstreamErrorKind, UpstreamMessage } from '../transport/upstream.ts';
import type { ReplyOutcome } from './session-report.ts';
import { reconnectDelay, type Backoff } from './reconnect.ts';

// A session's decisions, as a pure function: an event and the state before it in, the state after it and
// the commands to carry out. No sockets, no clocks (time comes in with the events), no metrics objects:
// the session actor (session.ts) runs the commands. Audio frames never come here: they flow past on the
// delivery pipeline, which the commands steer with in-band items (abort, reply start and end).

export type SessionOutcome =
  | 'normal'
  | 'client_gone'
  | 'hello_timeout'
  | 'idle'
  | 'too_slow'
  | 'too_large'
  | 'upstream_unavailable'
  | 'upstream_lost'
  | 'activation_timeout'
  | 'internal'
  | 'shutdown';

/** What went wrong on the way to the upstream: its connection, or provisioning the device (OTA, store, activation). */
export type UpstreamFault = UpstreamErrorKind | ProvisionFault;

/**
 * awaiting-hello → connecting → open ⇄ reconnecting → ending → closed. `ending`: the close is queued
 * behind what the client has yet to receive; the socket's close event makes it `closed`.
 */
export type Phase = 'awaiting-hello' | 'connecting' | 'open' | 'reconnecting' | 'ending' | 'closed';

export interface Conversation {
  readonly phase: Phase;
  /** What the client was last told. */
  readonly state: SessionState;
  readonly hello: ClientHello | undefined;
  /** After an abort, the rest of that reply from the upstream is not the client's. */
  readonly discarding: boolean;
  /** The gateway is draining: close once the reply in progress is over. */
  readonly draining: boolean;
  readonly endingOutcome: SessionOutcome;
  /** Counts upstream connections, so that a failure reported twice (a fault found, then the socket's own error) is handled once. */
  readonly connection: number;
  /** The upstream was lost and reconnecting has not yet come to an end (recovered, failed or abandoned). */
  readonly reconnecting: boolean;
  readonly reconnectAttempts: number;
  readonly lastClientAt: number;
  /** The last upstream control message; audio's own time comes with each tick. */
  readonly lastUpstreamAt: number;
  /** When the user's input ended: a reply is due from then, whatever the client sends meanwhile. */
  readonly replyDueAt: number;
  /** What the upstream socket had unsent at the last tick, and when it last took any of it. */
  readonly upstreamUnsent: number;
  readonly upstreamProgressAt: number;
}

/** What a session's decisions depend on besides its state: fixed for its life. */
export interface Settings {
  sessionId: string;
  bufferBytes: number;
  stallTimeoutMs: number;
  idleTimeoutMs: number;
  maxFrameBytes: number;
  reconnect: Backoff;
}

export type ConversationEvent =
  | { kind: 'client-text'; parsed: ClientParse; now: number }
  | { kind: 'client-audio'; data: Buffer; now: number }
  | { kind: 'client-oversized'; bytes: number }
  | { kind: 'client-closed'; code: number; tooLarge: boolean }
  | { kind: 'hello-timeout' }
  /**
   * `audioAt`: when the last upstream audio frame arrived; `clientAudioAt`: when the client's last uplink
   * frame went up (the session sends good ones without asking, see session.ts); `unsent`: what the
   * upstream socket holds.
   */
  | { kind: 'tick'; now: number; audioAt: number; clientAudioAt: number; unsent: number }
  | { kind: 'reconnect'; now: number }
  | { kind: 'too-slow' }
  | { kind: 'shutdown'; graceful: boolean }
  /** What the upstream socket of connection `connection` held unsent right after a send. */
  | { kind: 'sent-up'; connection: number; unsent: number }
  | { kind: 'upstream-failed'; connection: number; fault: UpstreamFault; detail: string }
  /** The server wants the user's device bound to their account: the code to show them. */
  | { kind: 'activation'; code: string; message: string }
  | { kind: 'upstream'; message: XiaozhiMessage; now: number }
  | { kind: 'upstream-invalid'; detail: string }
  | { kind: 'failed' };

/** In-band items the commands put on the delivery pipeline, in order with everything the client receives. */
export type Steer = 'discard' | 'abort' | 'reply-start' | 'reply-end';

export type Command =
  /** Through the ordered delivery pipeline; before there is one (no hello yet), straight to the socket. */
  | { c: 'send'; message: ServerMessage; direct: boolean }
  | { c: 'steer'; item: Steer }
  | { c: 'send-up'; message: UpstreamMessage }
  /** Client audio on its way up, or the edges of an utterance for the pcm16 uplink's encoder. */
  | { c: 'uplink'; audio: Buffer | 'flush' | 'reset' }
  /** Opens the upstream and the delivery pipeline for this hello, with the first connection. */
  | { c: 'open'; hello: ClientHello; connection: number }
  | { c: 'connect'; connection: number }
  | { c: 'disconnect' }
  | { c: 'reconnect-in'; ms: number }
  | { c: 'input-ended'; at: number }
  /** Closes after what is queued for the client; the upstream stops now. */
  | { c: 'close'; code: number; reason: string }
  /** Closes now, whatever waits. */
  | { c: 'end-socket'; code: number; reason: string }
  /** The session is over: release everything, and report it. */
  | { c: 'finish'; outcome: SessionOutcome; code: number; replyCut: ReplyOutcome }
  | { c: 'count'; metric: Counted; label: string }
  | { c: 'reply'; event: 'started' | ReplyOutcome }
  | { c: 'playout'; bufferedMs: number; underruns: number; playedMs: number }
  | { c: 'connected'; now: number }
  | { c: 'log'; level: 'debug' | 'info' | 'warn'; msg: string; fields?: Record<string, unknown> };

export type Counted = 'bad_message' | 'client_message' | 'upstream_unknown' | 'upstream_error' | 'reconnect' | 'buffer_overflow' | 'close_code';

export function initialConversation(now: number): Conversation {
  return {
    phase: 'awaiting-hello',
    state: 'ready',
    hello: undefined,
    discarding: false,
    draining: false,
    endingOutcome: 'normal',
    connection: 0,
    reconnecting: false,
    reconnectAttempts: 0,
    lastClientAt: now,
    lastUpstreamAt: 0,
    replyDueAt: 0,
    upstreamUnsent: 0,
    upstreamProgressAt: now,
  };
}

/** 1005 is a close frame without a code: a clean close all the same. */
const CLEAN_CLOSES = new Set([1000, 1001, 1005]);
const RARE_TYPES = new Set(['system', 'alert', 'custom', 'iot']);

/** What the client is told of an upstream fault, completing "the voice service …". */
const UPSTREAM_FAULTS: Record<UpstreamFault, string> = {
  provision: "could not set up this user's device",
  activation_timeout: 'waited in vain for the device to be activated',
  connect: 'could not be reached',
  hello_timeout: 'did not answer in time',
  bad_hello: 'answered with something that is not a xiaozhi hello',
  closed: 'closed the connection',
  socket: 'connection failed',
  stall: 'stopped sending mid-reply',
  not_reading: 'stopped reading what the gateway sends',
};

/** One event: the state after it, and what to do. */
export function decide(before: Conversation, event: ConversationEvent, settings: Settings): { state: Conversation; commands: Command[] } {
  const turn = new Turn(before, settings);
  turn.handle(event);
  return { state: turn.s, commands: turn.out };
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** One event's handling: a draft of the state and the commands so far. */
class Turn {
  readonly s: Mutable<Conversation>;
  readonly out: Command[] = [];

  constructor(
    before: Conversation,
    private readonly settings: Settings,
  ) {
    this.s = { ...before };
  }

  handle(e: ConversationEvent): void {
    const s = this.s;
    if (s.phase === 'closed') return;
    switch (e.kind) {
      case 'client-closed':
        if (e.tooLarge) {
          this.count('bad_message', 'too_large');
          return this.finish('too_large', e.code);
        }
        return this.finish(s.phase === 'ending' ? s.endingOutcome : CLEAN_CLOSES.has(e.code) ? 'normal' : 'client_gone', e.code);
      case 'too-slow':
        return this.abandon(CloseCode.tooSlow, 'client too slow', 'too_slow');
      case 'failed':
        this.out.push({ c: 'send', message: { type: 'error', code: 'internal', message: 'the gateway failed on this session' }, direct: true });
        return this.abandon(CloseCode.internal, 'internal error', 'internal');
      case 'client-oversized':
        this.count('bad_message', 'too_large');
        return this.abandon(CloseCode.tooBig, `frame of ${e.bytes} bytes is over the ${this.settings.maxFrameBytes}-byte limit`, 'too_large');
      case 'shutdown':
        if (!e.graceful) return this.abandon(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
    }
    if (s.phase === 'ending') return;
    switch (e.kind) {
      case 'upstream':
        s.lastUpstreamAt = e.now;
        return this.onUpstream(e.message, e.now);
      case 'upstream-invalid':
        this.count('bad_message', 'upstream_invalid');
        return this.log('debug', 'upstream message skipped', { detail: e.detail });
      case 'client-text':
        s.lastClientAt = e.now;
        return this.onClientText(e.parsed, e.now);
      case 'client-audio':
        s.lastClientAt = e.now;
        return this.onClientAudio(e.data);
      case 'hello-timeout':
        if (s.phase === 'awaiting-hello') this.abandon(CloseCode.helloTimeout, 'no hello in time', 'hello_timeout');
        return;
      case 'tick':
        return this.onTick(e.now, e.audioAt, e.clientAudioAt, e.unsent);
      case 'reconnect':
        if (s.phase === 'reconnecting') this.connect(e.now);
        return;
      case 'shutdown':
        s.draining = true;
        if (!this.inReply()) this.close(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
        return;
      case 'sent-up':
        // Counted once per connection, like the fault it reports: a report about one already given up is stale.
        if (e.connection === s.connection && e.unsent > this.settings.bufferBytes / 2) {
          this.count('buffer_overflow', 'upstream');
          this.failUpstream('not_reading', `${e.unsent} bytes unsent: the upstream is not reading`);
        }
        return;
      case 'upstream-failed':
        if (e.connection === s.connection) this.onUpstreamFailed(e.fault, e.detail);
        return;
      case 'activation':
        if (s.phase !== 'connecting' && s.phase !== 'reconnecting') return;
        // Not the code itself: whoever reads the logs could bind the user's device to their own account.
        this.log('info', 'activation code sent to the client');
        return this.emit({ type: 'activation', code: e.code, message: e.message });
    }
  }

  // Client side.

  private onClientText(parsed: ClientParse, now: number): void {
    const s = this.s;
    if (!parsed.ok) {
      this.count('bad_message', parsed.reason);
      return this.error('bad_message', parsed.detail);
    }
    const m = parsed.message;
    this.count('client_message', m.type);
    if (s.phase === 'awaiting-hello') {
      if (m.type !== 'hello') return this.error('hello_required', `send hello before ${m.type}`);
      s.hello = m;
      s.phase = 'connecting';
      s.connection++;
      this.out.push({ c: 'open', hello: m, connection: s.connection });
      return this.connected(now);
    }
    if (m.type === 'hello') return this.error('bad_message', 'hello was already received');
    if (m.type === 'ping') return this.emit({ type: 'pong', id: m.id });
    if (s.phase === 'connecting') return this.error('hello_required', `wait for the gateway's hello before ${m.type}`);
    if (m.type === 'playout') return void this.out.push({ c: 'playout', bufferedMs: m.bufferedMs, underruns: m.underruns, playedMs: m.playedMs });
    if (s.phase === 'reconnecting' && m.type === 'abort') return this.steer('discard');
    if (s.phase === 'reconnecting') return this.error('upstream_lost', `reconnecting to the voice service: ${m.type} was not sent`);
    switch (m.type) {
      case 'listen':
        if (m.state === 'start') {
          // Barge-in: speaking over the reply ends it first, as the xiaozhi firmware does.
          this.interruptReply();
          this.out.push({ c: 'uplink', audio: 'reset' });
          this.up({ type: 'listen', state: 'start', mode: m.mode });
          this.setState('listening');
        } else {
          this.out.push({ c: 'uplink', audio: 'flush' });
          this.up({ type: 'listen', state: 'stop' });
          this.inputEnded(now);
        }
        return;
      case 'text':
        // Typing over the reply interrupts it too, as a new utterance does upstream.
        this.interruptReply();
        this.up({ type: 'listen', state: 'detect', text: m.text });
        return this.inputEnded(now);
      case 'abort':
        this.abortReply();
        return this.setState('ready');
      case 'mcp':
        return this.up({ type: 'mcp', payload: m.payload });
    }
  }

  private onClientAudio(data: Buffer): void {
    const s = this.s;
    if (s.phase === 'awaiting-hello' || s.phase === 'connecting') return this.error('hello_required', 'audio before the session is ready is dropped');
    // While reconnecting there is nowhere to send it; the state tells the client so.
    if (s.phase !== 'open') return;
    const problem = uplinkAudioProblem(s.hello!.uplink.codec, data);
    if (problem !== undefined) return this.error('bad_audio', problem);
    this.out.push({ c: 'uplink', audio: data });
  }

  /** Ends the current reply: the upstream stops, and not one more of its frames reaches the client. */
  private abortReply(): void {
    this.out.push({ c: 'reply', event: 'aborted' });
    this.up({ type: 'abort', reason: 'client_abort' });
    this.s.discarding = true;
    this.steer('abort');
  }

  /**
   * New input cuts the reply short. The upstream may be done sending (its tts stop already in) while
   * the client has yet to hear what the pacer and the sink hold: that goes too.
   */
  private interruptReply(): void {
    if (this.s.state === 'speaking') this.abortReply();
    else this.steer('discard');
  }

  private inputEnded(now: number): void {
    this.s.replyDueAt = now;
    this.out.push({ c: 'input-ended', at: now });
    this.setState('processing');
  }

  // Upstream side.

  /** A fresh upstream session (and pipeline input): at first, and on each reconnect. */
  private connect(now: number): void {
    this.s.connection++;
    this.out.push({ c: 'connect', connection: this.s.connection });
    this.connected(now);
  }

  private connected(now: number): void {
    this.s.upstreamUnsent = 0;
    this.s.upstreamProgressAt = now;
  }

  private onUpstream(m: XiaozhiMessage, now: number): void {
    const s = this.s;
    switch (m.type) {
      case 'hello':
        return this.onUpstreamHello(m.sampleRate ?? XIAOZHI_DEFAULT_RATE, now);
      case 'stt':
        this.emit({ type: 'user_text', text: m.text });
        // In auto and realtime modes the server's VAD ends the utterance, not the client.
        if (s.state === 'listening') this.inputEnded(now);
        return;
      case 'llm':
        return this.emit({ type: 'emotion', emotion: m.emotion, emoji: m.text });
      case 'tts':
        if (m.state === 'start') {
          s.discarding = false;
          this.steer('reply-start');
          this.out.push({ c: 'reply', event: 'started' });
          this.setState('speaking');
        } else if (m.state === 'sentence_start') {
          if (!s.discarding) this.emit({ type: 'assistant_text', text: m.text });
        } else if (s.discarding) {
          // The aborted reply's end: the session has moved on already (ready, or listening on barge-in).
          s.discarding = false;
          this.steer('reply-end');
        } else {
          this.steer('reply-end');
          this.out.push({ c: 'reply', event: 'complete' });
          this.setState('ready');
        }
        return;
      case 'mcp':
        return this.emit({ type: 'mcp', payload: m.payload });
      case 'other':
        this.count('upstream_unknown', RARE_TYPES.has(m.original) ? m.original : 'unknown');
        return this.log('debug', 'upstream message of a type not acted on', { type: m.original });
    }
  }

  private onUpstreamHello(upstreamRate: number, now: number): void {
    const s = this.s;
    this.out.push({ c: 'connected', now });
    s.reconnectAttempts = 0;
    if (s.phase === 'reconnecting') {
      s.phase = 'open';
      this.endReconnecting('recovered');
      this.log('info', 'upstream recovered');
      return this.setState('ready');
    }
    if (s.phase !== 'connecting') return;
    s.phase = 'open';
    const negotiated = negotiate(s.hello!, upstreamRate);
    this.emit({ type: 'hello', version: PROTOCOL_VERSION, sessionId: this.settings.sessionId, ...negotiated });
    this.emit({ type: 'state', state: 'ready' });
    this.log('info', 'session open', { negotiated });
  }

  private onUpstreamFailed(fault: UpstreamFault, detail: string): void {
    const s = this.s;
    this.count('upstream_error', fault);
    this.out.push({ c: 'disconnect' });
    // Whatever else is reported of this connection now is stale.
    s.connection++;
    // Nobody entered the code: another attempt would only wait again.
    if (fault === 'activation_timeout') {
      this.log('warn', 'device not activated in time', { detail });
      if (s.reconnecting) this.endReconnecting('failed');
      this.error('activation_timeout', 'the device was not activated in time: enter the code in the voice service, then connect again');
      return this.close(CloseCode.upstreamUnavailable, 'activation timeout', 'activation_timeout');
    }
    // Clients hear what happened in the protocol's terms; addresses, library messages and the peer's
    // own words go to the log, for operators.
    if (s.phase === 'connecting') {
      this.log('warn', 'upstream unavailable', { kind: fault, detail });
      this.error('upstream_unavailable', `the voice service ${UPSTREAM_FAULTS[fault]}`);
      return this.close(CloseCode.upstreamUnavailable, 'upstream unavailable', 'upstream_unavailable');
    }
    if (s.phase === 'open') {
      this.out.push({ c: 'reply', event: 'upstream_lost' });
      this.log('warn', 'upstream lost', { kind: fault, detail });
      this.error('upstream_lost', `the voice service ${UPSTREAM_FAULTS[fault]}: reconnecting`);
      s.phase = 'reconnecting';
      s.reconnecting = true;
      // Whatever reply was under way is over: the next connection's audio is the client's again.
      s.discarding = false;
      this.steer('reply-end');
      this.setState('reconnecting');
      // Draining: that state change was this session's last word.
      if (s.phase !== 'reconnecting') return;
    } else {
      this.log('warn', 'upstream reconnect failed', { kind: fault, detail, attempt: s.reconnectAttempts });
    }
    const delay = reconnectDelay(s.reconnectAttempts, this.settings.reconnect);
    if (delay === undefined) {
      this.endReconnecting('failed');
      this.error('upstream_unavailable', `the voice service did not come back after ${this.settings.reconnect.attempts} attempts`);
      return this.close(CloseCode.upstreamUnavailable, 'upstream lost', 'upstream_lost');
    }
    s.reconnectAttempts++;
    this.out.push({ c: 'reconnect-in', ms: delay });
  }

  /** Once a second: a session idle too long goes; an upstream silent mid-reply, or not reading, is stuck. */
  private onTick(now: number, audioAt: number, clientAudioAt: number, unsent: number): void {
    const s = this.s;
    if (s.phase !== 'open') return;
    const { stallTimeoutMs, idleTimeoutMs } = this.settings;
    if (unsent === 0 || unsent < s.upstreamUnsent) s.upstreamProgressAt = now;
    s.upstreamUnsent = unsent;
    const upstreamAt = Math.max(s.lastUpstreamAt, audioAt);
    if (now - s.upstreamProgressAt > stallTimeoutMs) {
      this.failUpstream('not_reading', `${unsent} bytes unsent and none taken for ${stallTimeoutMs} ms`);
    } else if (this.inReply()) {
      if (now - Math.max(upstreamAt, s.replyDueAt) > stallTimeoutMs) this.failUpstream('stall', `no word from the upstream for ${stallTimeoutMs} ms mid-reply`);
    } else if (now - Math.max(s.lastClientAt, clientAudioAt, upstreamAt) > idleTimeoutMs) {
      this.close(CloseCode.normal, 'idle', 'idle');
    }
  }

  /** Handled as the connection's own failure would be; a later report about it is stale (`connection`). */
  private failUpstream(fault: UpstreamErrorKind, detail: string): void {
    this.onUpstreamFailed(fault, detail);
  }

  /** One episode of a lost upstream, counted once by how it ended. */
  private endReconnecting(outcome: 'recovered' | 'failed' | 'abandoned'): void {
    if (!this.s.reconnecting) return;
    this.s.reconnecting = false;
    this.count('reconnect', outcome);
  }

  private inReply(): boolean {
    return this.s.state === 'processing' || this.s.state === 'speaking';
  }

  // Output.

  private setState(state: SessionState): void {
    if (state === this.s.state) return;
    this.s.state = state;
    this.emit({ type: 'state', state });
    if (this.s.draining && !this.inReply()) this.close(CloseCode.goingAway, 'gateway shutting down', 'shutdown');
  }

  private emit(message: ServerMessage): void {
    this.out.push({ c: 'send', message, direct: false });
  }

  /** Errors go through the ordered pipeline once there is one; before the hello, straight to the socket. */
  private error(code: ErrorCode, message: string): void {
    this.out.push({ c: 'send', message: { type: 'error', code, message }, direct: this.s.hello === undefined });
  }

  private up(message: UpstreamMessage): void {
    this.out.push({ c: 'send-up', message });
  }

  private steer(item: Steer): void {
    this.out.push({ c: 'steer', item });
  }

  private count(metric: Counted, label: string): void {
    this.out.push({ c: 'count', metric, label });
  }

  private log(level: 'debug' | 'info' | 'warn', msg: string, fields?: Record<string, unknown>): void {
    this.out.push({ c: 'log', level, msg, fields });
  }

  // Endings.

  /** Closes after everything already queued for the client: the upstream stops now, the socket after. */
  private close(code: number, reason: string, outcome: SessionOutcome): void {
    const s = this.s;
    if (s.phase === 'ending' || s.phase === 'closed') return;
    if (s.hello === undefined) return this.abandon(code, reason, outcome);
    s.phase = 'ending';
    s.endingOutcome = outcome;
    this.out.push({ c: 'close', code, reason });
  }

  /** Closes now: whatever the client has yet to receive is dropped. */
  private abandon(code: number, reason: string, outcome: SessionOutcome): void {
    this.finish(outcome, code);
    this.out.push({ c: 'end-socket', code, reason });
  }

  private finish(outcome: SessionOutcome, code: number): void {
    if (this.s.phase === 'closed') return;
    this.s.phase = 'closed';
    // The client left, or a drain closed the session, before reconnecting came to an end.
    this.endReconnecting('abandoned');
    this.count('close_code', String(code));
    this.out.push({ c: 'finish', outcome, code, replyCut: replyCutBy(outcome) });
  }
}

/** How a session's end cuts a reply still in progress. */
function replyCutBy(outcome: SessionOutcome): ReplyOutcome {
  if (outcome === 'shutdown') return 'shutdown';
  return outcome === 'upstream_lost' || outcome === 'upstream_unavailable' ? 'upstream_lost' : 'client_gone';
}
