// The names of AudioWorkletGlobalScope (Web Audio API, section 1.32), which TypeScript's libraries lack.
// They are declared for the whole of web/src, but only the two worklet entries may use them: in the page
// they do not exist.

declare class AudioWorkletProcessor {
  readonly port: MessagePort;
  constructor(options?: AudioWorkletNodeOptions);
  process(inputs: Float32Array[][], outputs: Float32Array[][], parameters: Record<string, Float32Array>): boolean;
}

declare function registerProcessor(name: string, processor: new (options: AudioWorkletNodeOptions) => AudioWorkletProcessor): void;

/** The AudioContext's rate, in Hz. */
declare const sampleRate: number;
