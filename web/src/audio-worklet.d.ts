// The names of AudioWorkletGlobalScope (Web Audio API, section 1.32), which TypeScript's libraries lack.
// Only the worklet entries see them (web/tsconfig.worklet.json, whose only library is ES2022): the page's
// check (web/tsconfig.json) leaves this file out, so page code that used them would not compile. Of the
// DOM, a worklet has only what is declared here.

// `any` as in the DOM's own declaration, so that a handler may name what its port carries.
interface MessageEvent<T = any> {
  readonly data: T;
}

interface MessagePort {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
}

/** The options the page gave its AudioWorkletNode, as the processor's constructor receives them. */
interface AudioWorkletNodeOptions {
  processorOptions?: unknown;
}

declare class AudioWorkletProcessor {
  readonly port: MessagePort;
  constructor(options?: AudioWorkletNodeOptions);
  process(inputs: Float32Array[][], outputs: Float32Array[][], parameters: Record<string, Float32Array>): boolean;
}

declare function registerProcessor(name: string, processor: new (options: AudioWorkletNodeOptions) => AudioWorkletProcessor): void;

/** The AudioContext's rate, in Hz. */
declare const sampleRate: number;
