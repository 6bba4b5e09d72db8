import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import wavefile from 'wavefile';
import WebSocket from 'ws';

const USAGE = `usage: npm run client -- --text "hello" [--out reply.wav] [options]

Talks to a voicegw gateway: sends one utterance, records the spoken reply to a WAV file
and prints what arrived.

  --url URL        gateway endpoint (default ws://127.0.0.1:8080/v1/voice)
  --token TOKEN    client token, when the gateway requires one
  --text TEXT      what to say, as typed text
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
      out: { type: 'string', default: 'reply.wav' },
      rate: { type: 'string', default: '24000' },
      timeout: { type: 'string', default: '60' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || values.text === undefined) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(values.help ? 0 : 2);
  }
  const rate = Number(values.rate);
  const headers = values.token === undefined ? undefined : { Authorization: `Bearer ${values.token}` };
  const ws = new WebSocket(values.url, { headers, perMessageDeflate: false });
  const pcm: Buffer[] = [];
  const report: Report = { userText: [], assistantText: [], frames: 0, bytes: 0, firstAudioMs: undefined };
  let sentAt = 0;

  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no complete reply within ${values.timeout} s`)), Number(values.timeout) * 1000);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', downlink: { codec: 'pcm16', sampleRate: rate, transport: 'binary' } })));
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
      else if (m.type === 'state' && m.state === 'ready') {
        if (sentAt === 0) {
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

main().catch((error: unknown) => {
  process.stderr.write(`client: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
