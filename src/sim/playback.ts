// Speaking a reply as xiaozhi-esp32-server does (XIAOZHI.md): `stt`, `llm`, `tts start`, then per sentence
// its `sentence_start` and its frames, and `tts stop` a while after the last frame. An abort, or a reply
// that cuts in, ends the one in progress at once with its `tts stop`.
import { performance } from 'node:perf_hooks';
import type { Sentence } from './speech.ts';

/** xiaozhi-esp32-server sends this many frames of a sentence at once, then one per frame duration. */
const PREBUFFER_FRAMES = 5;
/** Node timers run on a millisecond clock and may fire a fraction of a millisecond before their due time. */
const TIMER_SLACK_MS = 1;

/** Where a reply goes: the session's socket. */
export interface Downlink {
  readonly id: string;
  sendJson(message: Record<string, unknown>): void;
  sendAudio(packet: Buffer): void;
}

export interface Timing {
  /** 'xiaozhi': per sentence 5 frames at once, then real time. 'burst': each sentence at once. */
  pacing: 'xiaozhi' | 'burst';
  frameMs: number;
  /** How long after the last frame `tts stop` follows. */
  stopDelayMs: number;
}

export class Playback {
  /** True from a reply's `stt` until its `tts stop`: the real server's "speaking" state. */
  private replying = false;
  /** Audio frames of the reply in progress sent so far. */
  private framesSent = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly device: Downlink,
    private readonly timing: Timing,
    /** Asked after `tts start` and after each frame with the frames sent so far; false ends the reply there. */
    private readonly goesOn: (framesSent: number) => boolean,
  ) {}

  /** Replies to what the device said, with these sentences. */
  play(heard: string, sentences: Sentence[]): void {
    if (this.replying) this.abort();
    this.replying = true;
    this.framesSent = 0;
    this.device.sendJson({ type: 'stt', text: heard, session_id: this.device.id });
    this.device.sendJson({ type: 'llm', text: '😊', emotion: 'happy', session_id: this.device.id });
    this.device.sendJson({ type: 'tts', state: 'start', session_id: this.device.id });
    if (this.goesOn(this.framesSent)) this.playSentence(sentences, 0);
  }

  abort(): void {
    this.cancel();
    this.stop();
  }

  /** No timer of the reply may fire any more: the session is over, or stalled. */
  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private playSentence(sentences: Sentence[], index: number): void {
    const sentence = sentences[index];
    if (sentence === undefined) {
      this.timer = setTimeout(() => this.stop(), this.timing.stopDelayMs);
      return;
    }
    this.device.sendJson({ type: 'tts', state: 'sentence_start', text: sentence.text, session_id: this.device.id });
    const start = performance.now();
    let next = 0;
    const sendDue = (): void => {
      this.timer = undefined;
      while (next < sentence.packets.length) {
        // Five frames at once, then one per frame duration against the clock, so that delays never add up.
        const due = this.timing.pacing === 'burst' ? 0 : start + Math.max(0, next - PREBUFFER_FRAMES + 1) * this.timing.frameMs;
        const wait = due - performance.now();
        if (wait > TIMER_SLACK_MS) {
          this.timer = setTimeout(sendDue, wait);
          return;
        }
        this.device.sendAudio(sentence.packets[next++]!);
        this.framesSent++;
        if (!this.goesOn(this.framesSent)) return;
      }
      // The next sentence starts on a fresh turn of the event loop, so that an abort can land between sentences.
      this.timer = setTimeout(() => this.playSentence(sentences, index + 1), 0);
    };
    sendDue();
  }

  private stop(): void {
    this.timer = undefined;
    this.replying = false;
    this.device.sendJson({ type: 'tts', state: 'stop', session_id: this.device.id });
  }
}
