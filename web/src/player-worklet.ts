// The player: the AudioWorkletProcessor 'voicegw-player'. Its logic is PlayerCore (player-core.ts); this
// is only the audio thread's wiring: commands in from the page, one quantum out, figures back when due.
import { PlayerCore } from './player-core.ts';
import type { PlayerCommand } from './player-messages.ts';

class PlayerProcessor extends AudioWorkletProcessor {
  private readonly core: PlayerCore;

  constructor(options: AudioWorkletNodeOptions) {
    super(options);
    this.core = new PlayerCore(sampleRate, (options.processorOptions as { targetMs: number }).targetMs);
    this.port.onmessage = (e: MessageEvent<PlayerCommand>) => this.core.command(e.data);
  }

  override process(_inputs: Float32Array[][], outputs: Float32Array[][]): boolean {
    if (this.core.process(outputs[0]![0]!)) this.port.postMessage(this.core.figures);
    return true;
  }
}

registerProcessor('voicegw-player', PlayerProcessor);
