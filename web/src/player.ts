// The page's side of the player: loads the worklet, hands it decoded frames and marks, and keeps the
// figures it posts back.
import { noFigures, type PlayerCommand, type PlayerFigures } from './player-messages.ts';

export class Player {
  /** The worklet's latest figures. */
  figures: PlayerFigures = noFigures();

  private constructor(
    private readonly node: AudioWorkletNode,
    onFigures: (figures: PlayerFigures) => void,
  ) {
    node.port.onmessage = (e: MessageEvent<PlayerFigures>) => {
      this.figures = e.data;
      onFigures(e.data);
    };
  }

  static async create(context: AudioContext, targetMs: number, onFigures: (figures: PlayerFigures) => void): Promise<Player> {
    await context.audioWorklet.addModule('/player-worklet.js');
    const node = new AudioWorkletNode(context, 'voicegw-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetMs },
    });
    node.connect(context.destination);
    return new Player(node, onFigures);
  }

  push(samples: Float32Array, sampleRate: number): void {
    this.post({ type: 'frame', samples, sampleRate }, [samples.buffer as ArrayBuffer]);
  }

  /** The reply's audio is all in: let the worklet play out the rest without waiting for the target. */
  end(): void {
    this.post({ type: 'end' });
  }

  /** The user's turn has ended now: the reply's first sound measures the time to first audio from here. */
  turn(): void {
    this.post({ type: 'turn', at: Date.now() });
  }

  /** Barge-in or abort: silence at once, and nothing buffered is ever played. */
  flush(): void {
    this.post({ type: 'flush', at: Date.now() });
  }

  setTarget(ms: number): void {
    this.post({ type: 'target', ms });
  }

  private post(command: PlayerCommand, transfer: Transferable[] = []): void {
    this.node.port.postMessage(command, transfer);
  }
}
