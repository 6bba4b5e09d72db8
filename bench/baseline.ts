// What every bench measures against, and how it prints: the bare Opus decode cost per frame (the floor
// any relay that hands out PCM pays), the median, and markdown tables.
import opus from '@discordjs/opus';
import { loadSpeech } from '../src/sim/speech.ts';

const speech = loadSpeech();
const packets = speech.sentences.flatMap((s) => s.packets);

/** CPU µs per decoded packet, `decoders` streams interleaved; the median of `reps` runs. */
export function bareDecodeUs(decoders: number, reps: number): number {
  const ds = Array.from({ length: decoders }, () => new opus.OpusEncoder(speech.sampleRate, 1));
  // Each decoder walks the reply in order (a real stream) from its own starting point: if all decoded the
  // same packet back to back, branch predictors and caches would flatter libopus.
  const frames = packets.length * Math.max(decoders, 50); // every decoder sees every packet equally often
  const run = () => {
    for (let i = 0; i < frames; i++) {
      const d = i % decoders;
      ds[d]!.decode(packets[(Math.floor(i / decoders) + d * 37) % packets.length]!);
    }
  };
  run(); // warm-up: JIT, caches, every decoder touched
  const runs = Array.from({ length: reps }, () => {
    const before = process.cpuUsage();
    run();
    const used = process.cpuUsage(before);
    return (used.user + used.system) / frames;
  });
  return median(runs);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function table(rows: string[][]): string {
  const [head, ...body] = rows;
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  return [line(head!), line(head!.map(() => '---')), ...body.map(line)].join('\n');
}
