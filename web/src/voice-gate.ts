// Hands-free: which microphone chunks carry speech, judged by their level against the room's noise
// floor. Only speech goes up, with a little before it (so that the first syllable is not cut) and a
// second of the silence after it: in auto mode the voice service decides where an utterance ends, and
// hears that silence; what follows it is not worth sending.
import { CHUNK_MS } from './mic.ts';

/** Louder than the threshold for this long: speech has begun. */
const ONSET_MS = 100;
/** Quieter for this long: it has ended. */
const HANGOVER_MS = 1000;
const PREROLL_MS = 300;
/** Speech is this much above the noise floor, and never quieter than MIN_DB. */
const MARGIN_DB = 15;
const MIN_DB = -55;
/** How fast the floor rises towards louder sound, per chunk: about 3 dB a second, so speech barely moves it. */
const FLOOR_RISE_DB = 0.06;

export class VoiceGate {
  speaking = false;
  private floorDb = -70;
  private loudMs = 0;
  private quietMs = 0;
  private preroll: Int16Array[] = [];

  /** Takes one chunk; returns what to send now: nothing in silence, the pre-roll too at an onset. */
  push(chunk: Int16Array): Int16Array[] {
    const db = levelDb(chunk);
    this.floorDb = db < this.floorDb ? db : this.floorDb + Math.min(db - this.floorDb, FLOOR_RISE_DB);
    const loud = db > Math.max(this.floorDb + MARGIN_DB, MIN_DB);
    this.loudMs = loud ? this.loudMs + CHUNK_MS : 0;
    this.quietMs = loud ? 0 : this.quietMs + CHUNK_MS;
    if (this.speaking) {
      if (this.quietMs >= HANGOVER_MS) this.speaking = false;
      return [chunk];
    }
    this.preroll.push(chunk);
    if (this.preroll.length > PREROLL_MS / CHUNK_MS) this.preroll.shift();
    if (this.loudMs < ONSET_MS) return [];
    this.speaking = true;
    const onset = this.preroll;
    this.preroll = [];
    return onset;
  }
}

/** The chunk's mean power, in dB below full scale. */
function levelDb(chunk: Int16Array): number {
  let sum = 0;
  for (const s of chunk) sum += s * s;
  return 10 * Math.log10(sum / chunk.length / (32768 * 32768) + 1e-12);
}
