// The page's side of the player: loads the worklet, hands it decoded frames and marks, and keeps the
// figures it posts back. It exists at once (the page's figures are there before anything is awaited);
// the worklet follows (`ready`), and until then there is nothing to play and commands are not sent.
import { noFigures, type PlayerCommand, type PlayerFigures } from './player-messages.ts';

export class Player {
  /** The worklet's latest figures. */
  figures: PlayerFigures = noFigures();
  /** The worklet is running; rejects if it could not be loaded. */
  readonly ready: Promise<void>;
  private node: AudioWorkletNode | undefined;

  constructor(
    context: AudioContext,
    private targetMs: number,
    private readonly onFigures: (figures: PlayerFigures) => void,
  ) {
    this.ready = this.load(context);
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
    this.targetMs = ms;
    this.post({ type: 'target', ms });
  }

  private async load(context: AudioContext): Promise<void> {
    await context.audioWorklet.addModule('/player-worklet.js');
    const node = new AudioWorkletNode(context, 'voicegw-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetMs: this.targetMs },
    });
    node.port.onmessage = (e: MessageEvent<PlayerFigures>) => {
      this.figures = e.data;
      this.onFigures(e.data);
    };
    node.connect(context.destination);
    this.node = node;
  }

  private post(command: PlayerCommand, transfer: Transferable[] = []): void {
    this.node?.port.postMessage(command, transfer);
  }
}
