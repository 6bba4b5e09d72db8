// The opus downlink, decoded in the page with WebCodecs: the gateway then only relays the voice
// service's packets. AudioDecoder answers asynchronously, one output per packet, in order; whatever must
// follow a packet's audio (a lost packet's silence, the end of the reply) waits in one queue behind the
// packets still decoding.

/** A packet being decoded, or what to do once every packet before it has come out. */
type Step = 'decode' | (() => void);

/**
 * Decoders that fail are replaced this many times in a session; one more failure and the stream gives
 * up (the page then asks the gateway for pcm16): a browser whose decoder fails on every packet would
 * otherwise play nothing, and report an error per packet.
 */
const MAX_RECREATIONS = 3;

export interface OpusEvents {
  audio(samples: Float32Array, sampleRate: number): void;
  /** A decoder failed and was replaced: the audio it held is lost. */
  error(message: string): void;
  /** Decoders kept failing: this stream decodes nothing more. */
  gaveUp(message: string): void;
}

export class OpusStream {
  private decoder: AudioDecoder;
  private steps: Step[] = [];
  /** Outputs still to come of packets a barge-in dropped: they are thrown away. */
  private stale = 0;
  private recreations = 0;
  private gaveUp = false;
  /** The last packet's length and rate: a lost packet is as long. */
  private lastLength = 2880;
  private lastRate = 48000;
  /** The next packet's timestamp, in µs: the decoder wants them to advance. */
  private timestamp = 0;

  constructor(
    private readonly sampleRate: number,
    private readonly events: OpusEvents,
  ) {
    this.decoder = this.open();
  }

  /** One binary frame: an Opus packet, or an empty frame for a packet the service lost. */
  packet(data: ArrayBuffer): void {
    if (this.gaveUp) return;
    // WebCodecs has no way to ask for packet-loss concealment (an empty chunk is an error that closes the
    // decoder), so a lost packet is played as silence of the same length: the timeline keeps its place.
    if (data.byteLength === 0) return this.after(() => this.events.audio(new Float32Array(this.lastLength), this.lastRate));
    // A decoder's error closes it at once but is reported a task later: the next packet must not wait.
    if (this.decoder.state === 'closed') this.failed('it closed');
    if (this.gaveUp) return;
    this.steps.push('decode');
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: this.timestamp, data }));
    this.timestamp += Math.round((this.lastLength / this.lastRate) * 1e6);
  }

  /** Runs `then` once every packet given so far has come out. */
  after(then: () => void): void {
    if (this.steps.length === 0) then();
    else this.steps.push(then);
  }

  /** Barge-in: nothing given so far comes out, and nothing waiting behind it runs. */
  drop(): void {
    this.stale += this.steps.filter((s) => s === 'decode').length;
    this.steps = [];
  }

  close(): void {
    if (this.decoder.state !== 'closed') this.decoder.close();
  }

  private open(): AudioDecoder {
    const decoder: AudioDecoder = new AudioDecoder({
      // A replaced decoder may still deliver what it decoded: that belongs to no step of this one.
      output: (data) => (decoder === this.decoder ? this.output(data) : data.close()),
      error: (error) => {
        if (decoder === this.decoder) this.failed(error.message);
      },
    });
    decoder.configure({ codec: 'opus', sampleRate: this.sampleRate, numberOfChannels: 1 });
    return decoder;
  }

  private output(data: AudioData): void {
    if (this.stale > 0) {
      this.stale--;
      return data.close();
    }
    const samples = new Float32Array(data.numberOfFrames);
    data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
    this.lastLength = samples.length;
    this.lastRate = data.sampleRate;
    data.close();
    this.steps.shift();
    this.events.audio(samples, this.lastRate);
    this.runWaiting();
  }

  /** A packet would not decode, and the decoder is closed: a new one takes over (up to a point); what waited runs. */
  private failed(reason: string): void {
    const waiting = this.steps;
    this.steps = [];
    this.stale = 0;
    if (this.recreations === MAX_RECREATIONS) {
      this.gaveUp = true;
      this.close();
      this.events.gaveUp(`The Opus decoder failed ${MAX_RECREATIONS + 1} times (last: ${reason}).`);
    } else {
      this.recreations++;
      this.events.error(`The Opus decoder failed (${reason}); the audio it held is lost.`);
      this.decoder = this.open();
    }
    for (const step of waiting) if (step !== 'decode') step();
  }

  private runWaiting(): void {
    while (typeof this.steps[0] === 'function') (this.steps.shift() as () => void)();
  }
}
