import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import wavefile from 'wavefile';
import WebSocket from 'ws';
import { readUtterance, UPLINK_FRAME_MS } from './utterance.ts';

const USAGE = `usage: npm run client -- (--text "hello" | --wav input.wav) [--out reply.wav] [options]

Talks to a voicegw gateway: sends one utterance, records the spoken reply to a WAV file
and prints what arrived.

  --url URL        gateway endpoint (default ws://127.0.0.1:8080/v1/voice)
  --token TOKEN    client token, when the gateway requires one
  --text TEXT      what to say, as typed text
  --wav FILE       what to say, as speech: a mono 16-bit WAV at 8, 12, 16, 24 or 48 kHz,
                   sent as microphone audio at real-time pace
  --uplink CODEC   how --wav is sent: pcm16 (the gateway encodes) or opus (default pcm16)
  --out FILE       WAV file for the reply (default reply.wav)
  --rate HZ        downlink sample rate: 8000, 12000, 16000, 24000, 48000 (default 24000)
  --timeout S      give up after this many seconds (default 60)`;

interface Report {
  userText: string[];
  assistantText: string[];
  frames: number;
  bytes: number;
  firstAudioMs: number | undefined;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: 'ws://127.0.0.1:8080/v1/voice' },
      token: { type: 'string' },
      text: { type: 'string' },
      wav: { type: 'string' },
      uplink: { type: 'string', default: 'pcm16' },
      out: { type: 'string', default: 'reply.wav' },
      rate: { type: 'string', default: '24000' },
      timeout: { type: 'string', default: '60' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || (values.text === undefined) === (values.wav === undefined)) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(values.help ? 0 : 2);
  }
  if (values.uplink !== 'pcm16' && values.uplink !== 'opus') throw new Error('--uplink is pcm16 or opus');
  const rate = Number(values.rate);
  const speech = values.wav === undefined ? undefined : readUtterance(values.wav, values.uplink);
  const headers = values.token === undefined ? undefined : { Authorization: `Bearer ${values.token}` };
  const ws = new WebSocket(values.url, { headers, perMessageDeflate: false });
  const pcm: Buffer[] = [];
  const report: Report = { userText: [], assistantText: [], frames: 0, bytes: 0, firstAudioMs: undefined };
  let sentAt = 0;

  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no complete reply within ${values.timeout} s`)), Number(values.timeout) * 1000);
    ws.on('open', () => {
      const uplink = speech === undefined ? undefined : { codec: speech.codec, sampleRate: speech.sampleRate, frameMs: UPLINK_FRAME_MS };
      ws.send(JSON.stringify({ type: 'hello', downlink: { codec: 'pcm16', sampleRate: rate, transport: 'binary' }, uplink }));
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        report.firstAudioMs ??= performance.now() - sentAt;
        report.frames++;
        report.bytes += data.length;
        pcm.push(data);
        return;
      }
      const m = JSON.parse(data.toString('utf8')) as { type: string; state?: string; text?: string; code?: string; message?: string };
      if (m.type === 'user_text') report.userText.push(m.text ?? '');
      else if (m.type === 'assistant_text') report.assistantText.push(m.text ?? '');
      else if (m.type === 'error') process.stderr.write(`gateway error ${m.code}: ${m.message}\n`);
      else if (m.type === 'activation') process.stdout.write(`activation code ${m.code}: ${m.message}\nwaiting until the device is bound (within --timeout)\n`);
      else if (m.type === 'state' && m.state === 'ready') {
        if (sentAt === 0 && speech !== undefined) {
          sentAt = -1;
          ws.send(JSON.stringify({ type: 'listen', state: 'start', mode: 'manual' }));
          speak(ws, speech.frames).then(() => {
            sentAt = performance.now();
            ws.send(JSON.stringify({ type: 'listen', state: 'stop' }));
          }, reject);
        } else if (sentAt === 0) {
          sentAt = performance.now();
          ws.send(JSON.stringify({ type: 'text', text: values.text }));
        } else if (report.frames > 0) {
          clearTimeout(timer);
          resolve();
        }
      }
    });
    ws.on('close', (code, reason) => {
      clearTimeout(timer);
      reject(new Error(`the gateway closed the session: ${code} ${reason.toString('utf8')}`));
    });
    ws.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  await done;
  ws.close(1000);

  const samples = Buffer.concat(pcm);
  const wav = new wavefile.WaveFile();
  wav.fromScratch(1, rate, '16', new Int16Array(samples.buffer, samples.byteOffset, samples.length / 2));
  writeFileSync(values.out, wav.toBuffer());

  const print = (label: string, value: string) => process.stdout.write(`${label.padEnd(16)}${value}\n`);
  for (const t of report.userText) print('user_text', t);
  for (const t of report.assistantText) print('assistant_text', t);
  print('frames', String(report.frames));
  print('audio', `${(report.bytes / 2 / rate).toFixed(2)} s`);
  print('first audio', report.firstAudioMs === undefined ? '-' : `${report.firstAudioMs.toFixed(0)} ms`);
  print('wrote', values.out);
}

/** Sends one frame per UPLINK_FRAME_MS against the clock, as a microphone would. */
async function speak(ws: WebSocket, frames: Buffer[]): Promise<void> {
  const start = performance.now();
  for (let i = 0; i < frames.length; i++) {
    const wait = start + i * UPLINK_FRAME_MS - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    ws.send(frames[i]!, { binary: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`client: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
