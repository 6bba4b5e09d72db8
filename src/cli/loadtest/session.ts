// One load session, driven by PROTOCOL.md alone: hello, then its turns (typed text or a spoken WAV),
// each reply followed to its closing `state ready`, optionally interrupted (barge-in); or, for a slow
// client, turns asked on a timer by a socket that has stopped reading. A gateway at capacity refuses a
// session before it opens (`error overloaded`, close 1013): that is counted as refused, not failed.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { UPLINK_FRAME_MS, type Utterance } from '../utterance.ts';
import { frameMs } from './audio.ts';
import { ReplyTrack, SeqCheck, type ReplyEnd } from './reply.ts';

export interface Hello {
  type: 'hello';
  version: 1;
  downlink: { codec: 'pcm16' | 'opus'; sampleRate: number; transport: 'binary' | 'json' };
  uplink?: { codec: 'pcm16' | 'opus'; sampleRate: number; frameMs: number };
  pacing: { mode: 'none' | 'realtime'; prebufferMs: number };
}

export interface SessionSpec {
  url: string;
  headers: Record<string, string>;
  hello: Hello;
  input: { text: string } | { utterance: Utterance };
  slow: boolean;
  /** One entry per turn: interrupt the reply once this much of its audio has arrived (ms), or never. */
  bargeInAfterMs: readonly (number | undefined)[];
  /** Sent upstream in an `mcp` message, so that the tool's own simulator can say which session it serves. */
  tag: string | undefined;
  buffersMs: readonly number[];
  helloTimeoutMs: number;
  turnTimeoutMs: number;
}

/** Running totals across sessions, for the progress bar. */
export interface Live {
  open: number;
  repliesDone: number;
  failed: number;
  refused: number;
  /** Per buffer size, underruns so far. */
  underruns: number[];
}

export interface SessionRecord {
  slow: boolean;
  tag: string | undefined;
  /** When the upgrade request went out. */
  startedAt: number | undefined;
  /** When the gateway's first `state ready` came: the session is open from here. */
  openedAt: number | undefined;
  closedAt: number | undefined;
  /**
   * undefined while it runs; a slow session is neither ok nor failed, only slow; a refused one was turned
   * away before it opened (`error overloaded` or close 1013, or HTTP 503 at the upgrade).
   */
  outcome: 'ok' | 'failed' | 'slow' | 'refused' | undefined;
  failure: string | undefined;
  /** Refused: from the upgrade request to the close (or the 503): how long a client waits to be told. */
  refusedAfterMs: number | undefined;
  closeCode: number | undefined;
  /** `error` codes the gateway sent, in order. */
  errors: string[];
  replies: ReplyTrack[];
}

/** A slow client asks its next question this long after the last: about one reply of the simulator's speech. */
const SLOW_TURN_GAP_MS = 8000;
/** A close handshake that takes longer than this is cut. */
const CLOSE_GRACE_MS = 2000;

export class LoadSession {
  readonly record: SessionRecord;
  /** Resolves once the socket is closed and the record is final. */
  readonly done: Promise<SessionRecord>;
  private ws: WebSocket | undefined;
  /** What the gateway's hello says is in force (an opus rate may differ from the one asked). */
  private readonly downlink: { codec: 'pcm16' | 'opus'; sampleRate: number };
  private reply: ReplyTrack | undefined;
  private previousAborted = false;
  private lastFrameMs = UPLINK_FRAME_MS;
  private readonly seq = new SeqCheck();
  private timer: NodeJS.Timeout | undefined;
  /** Aborted when the socket closes: no wait of this session outlives it. */
  private readonly over = new AbortController();
  private resolveDone!: (r: SessionRecord) => void;

  constructor(
    private readonly spec: SessionSpec,
    private readonly live: Live,
  ) {
    this.record = {
      slow: spec.slow,
      tag: spec.tag,
      startedAt: undefined,
      openedAt: undefined,
      closedAt: undefined,
      outcome: undefined,
      failure: undefined,
      refusedAfterMs: undefined,
      closeCode: undefined,
      errors: [],
      replies: [],
    };
    this.downlink = { codec: spec.hello.downlink.codec, sampleRate: spec.hello.downlink.sampleRate };
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  start(): void {
    this.record.startedAt = performance.now();
    const ws = new WebSocket(this.spec.url, { headers: this.spec.headers, perMessageDeflate: false });
    this.ws = ws;
    this.arm(this.spec.helloTimeoutMs, 'no hello and ready in time');
    ws.on('open', () => ws.send(JSON.stringify(this.spec.hello)));
    ws.on('message', (data: Buffer, isBinary: boolean) => (isBinary ? this.onAudio(data, undefined) : this.onText(data.toString('utf8'))));
    // A gateway (or the balancer in front of it) may also refuse at the upgrade: ws reports the status so.
    ws.on('error', (error) => (/Unexpected server response: 503\b/.test(error.message) ? this.refuse() : this.fail(`connection: ${error.message}`, 'closed')));
    ws.on('close', (code) => this.onClose(code));
  }

  /** Ends the session now: one that has not finished fails with `why`; a slow one is simply over. */
  async stop(why: string): Promise<void> {
    if (this.record.closedAt !== undefined) return;
    this.fail(why, 'timeout');
    const ws = this.ws;
    if (ws === undefined) return this.onClose(undefined);
    // A paused socket would never read the gateway's close frame, nor a close the gateway sent before.
    ws.resume();
    ws.close(1000);
    const cut = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
    await this.done;
    clearTimeout(cut);
  }

  private onText(text: string): void {
    let m: { type?: unknown; state?: unknown; code?: unknown; seq?: unknown; data?: unknown; downlink?: { codec?: unknown; sampleRate?: unknown } };
    try {
      m = JSON.parse(text) as typeof m;
    } catch {
      this.record.errors.push('(not JSON)');
      return;
    }
    if (m.type === 'hello' && m.downlink !== undefined) {
      if (m.downlink.codec === 'opus' || m.downlink.codec === 'pcm16') this.downlink.codec = m.downlink.codec;
      if (typeof m.downlink.sampleRate === 'number') this.downlink.sampleRate = m.downlink.sampleRate;
    } else if (m.type === 'audio_frame' && typeof m.data === 'string') {
      this.onAudio(Buffer.from(m.data, 'base64'), typeof m.seq === 'number' ? m.seq : undefined);
    } else if (m.type === 'error') {
      this.record.errors.push(typeof m.code === 'string' ? m.code : '(no code)');
    } else if (m.type === 'state' && m.state === 'ready') {
      this.onReady();
    }
  }

  private onReady(): void {
    if (this.record.openedAt === undefined) {
      this.record.openedAt = performance.now();
      this.live.open++;
      if (this.spec.tag !== undefined) this.send({ type: 'mcp', payload: { jsonrpc: '2.0', method: 'notifications/loadtest', params: { tag: this.spec.tag } } });
      if (this.spec.slow) void this.askSlowly();
      else this.nextTurn();
      return;
    }
    // States are sent only when they change, so the first `ready` after a turn's input is its reply's end.
    if (this.reply === undefined || this.reply.end !== undefined) return;
    this.reply.finish(performance.now(), 'ready');
    this.previousAborted = this.reply.abortedAt !== undefined;
    this.live.repliesDone++;
    this.nextTurn();
  }

  private nextTurn(): void {
    const turn = this.record.replies.length;
    if (turn >= this.spec.bargeInAfterMs.length) {
      this.record.outcome = 'ok';
      this.disarm();
      this.ws!.close(1000);
      return;
    }
    const reply = new ReplyTrack(turn, this.spec.buffersMs);
    this.reply = reply;
    this.record.replies.push(reply);
    this.arm(this.spec.turnTimeoutMs, `reply ${turn + 1} did not end in time`);
    void this.speak().then((at) => (reply.inputEndedAt = at));
  }

  /** Sends one turn's input; answers when it ended, where the reply's time to first audio counts from. */
  private async speak(): Promise<number> {
    const input = this.spec.input;
    if ('text' in input) {
      this.send({ type: 'text', text: input.text });
      return performance.now();
    }
    this.send({ type: 'listen', state: 'start', mode: 'manual' });
    // One frame per frame length against the clock, as a microphone would, so that delays never add up.
    const start = performance.now();
    for (let i = 0; i < input.utterance.frames.length && this.ws?.readyState === WebSocket.OPEN; i++) {
      const wait = start + i * UPLINK_FRAME_MS - performance.now();
      if (wait > 0 && !(await this.pause(wait))) break;
      this.ws.send(input.utterance.frames[i]!, { binary: true });
    }
    this.send({ type: 'listen', state: 'stop' });
    return performance.now();
  }

  /** A slow client: stops reading, then asks each question SLOW_TURN_GAP_MS after the last. */
  private async askSlowly(): Promise<void> {
    this.disarm();
    this.ws!.pause();
    for (let turn = 0; turn < this.spec.bargeInAfterMs.length && this.ws?.readyState === WebSocket.OPEN; turn++) {
      if (turn > 0 && !(await this.pause(SLOW_TURN_GAP_MS))) return;
      await this.speak();
    }
  }

  private onAudio(payload: Buffer, seq: number | undefined): void {
    const reply = this.reply;
    if (reply === undefined) return;
    const now = performance.now();
    const ms = frameMs(this.downlink.codec, this.downlink.sampleRate, payload, this.lastFrameMs);
    this.lastFrameMs = ms;
    // The frames an abort discards may already have had their numbers: a gap next to an abort is no loss.
    if (seq !== undefined) this.seq.see(seq, reply, reply.abortedAt !== undefined || (reply.arrivals.length === 0 && this.previousAborted));
    for (const i of reply.frame(now, ms)) this.live.underruns[i]!++;
    const bargeIn = this.spec.bargeInAfterMs[reply.turn];
    if (bargeIn !== undefined && reply.abortedAt === undefined && reply.end === undefined && reply.heardMs >= bargeIn) {
      this.send({ type: 'abort' });
      reply.abort(now);
    }
  }

  private onClose(code: number | undefined): void {
    const now = performance.now();
    this.disarm();
    this.over.abort();
    this.record.closeCode = code;
    this.record.closedAt = now;
    // Refused: turned away before it opened. Once open, a 1013 (draining) ends a session like any close.
    if (this.record.openedAt === undefined && (code === 1013 || this.record.errors.includes('overloaded'))) this.refuse();
    this.fail(code === undefined ? 'never connected' : `closed ${code}`, 'closed');
    if (this.record.openedAt !== undefined) this.live.open--;
    this.resolveDone(this.record);
  }

  /** The gateway turned the session away before it opened: the answer a client at capacity must get, not a failure. */
  private refuse(): void {
    if (this.record.outcome !== undefined) return;
    this.disarm();
    this.record.outcome = 'refused';
    this.record.refusedAfterMs = performance.now() - this.record.startedAt!;
    this.live.refused++;
  }

  /** The first reason a session fails is the one it is counted under; a slow session only ends. */
  private fail(why: string, replyEnd: ReplyEnd): void {
    if (this.record.outcome !== undefined) return;
    this.reply?.finish(performance.now(), replyEnd);
    if (this.spec.slow) {
      this.record.outcome = 'slow';
      return;
    }
    this.record.outcome = 'failed';
    this.record.failure = why;
    this.live.failed++;
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.close(1000);
  }

  /** Waits `ms`; false when the session closed meanwhile. */
  private pause(ms: number): Promise<boolean> {
    return sleep(ms, true, { signal: this.over.signal }).catch(() => false);
  }

  private arm(ms: number, why: string): void {
    this.disarm();
    this.timer = setTimeout(() => void this.stop(why), ms);
  }

  private disarm(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private send(message: Record<string, unknown>): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }
}
