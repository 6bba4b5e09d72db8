// The simulator's reply: pre-encoded speech (test/fixtures/speech.json, made by make-speech.sh).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** One sentence of a reply: its text, and its audio as Opus packets, one per frame. */
export interface Sentence {
  text: string;
  packets: Buffer[];
}

export interface Speech {
  sampleRate: number;
  frameMs: number;
  sentences: Sentence[];
}

const DEFAULT_PATH = fileURLToPath(new URL('../../test/fixtures/speech.json', import.meta.url));
let cached: Speech | undefined;

/** Reads a speech fixture. The default one is read once and shared: its buffers must not be mutated. */
export function loadSpeech(path?: string): Speech {
  if (path === undefined || path === DEFAULT_PATH) return (cached ??= read(DEFAULT_PATH));
  return read(path);
}

function read(path: string): Speech {
  const raw = JSON.parse(readFileSync(path, 'utf8')) as {
    sampleRate: number;
    frameMs: number;
    sentences: { text: string; packets: string[] }[];
  };
  return {
    sampleRate: raw.sampleRate,
    frameMs: raw.frameMs,
    sentences: raw.sentences.map((s) => ({ text: s.text, packets: s.packets.map((p) => Buffer.from(p, 'base64')) })),
  };
}
