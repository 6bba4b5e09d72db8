// "The obvious alternative" to the gateway, for bench/gateway.bench.ts to compare against: a relay
// written straightforwardly with the plain `ws` package on both sides and @discordjs/opus (one decoder
// per session). It speaks the same client protocol as far as the bench uses it (hello, text, listen,
// abort, ping; binary downlink, pcm16 or opus) and forwards every message as it comes: one send per
// message, no batching, no queues, no metrics. With the opus downlink it decodes nothing and hands each
// upstream packet on as it is, as any plain relay would. Env: PORT, HOST, UPSTREAM_URL.
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import opus from '@discordjs/opus';
import WebSocket, { WebSocketServer, type RawData } from 'ws';

const upstreamUrl = process.env.UPSTREAM_URL;
if (upstreamUrl === undefined) throw new Error('UPSTREAM_URL is required');
const port = Number(process.env.PORT ?? 8080);
const host = process.env.HOST ?? '127.0.0.1';

type Json = Record<string, unknown>;

const server = createServer((_req, res) => res.end('ok')); // /healthz, and anything else
const wss = new WebSocketServer({ server, path: '/v1/voice' });

wss.on('connection', (client) => {
  const sessionId = randomUUID();
  let upstream: WebSocket | undefined;
  let upstreamSessionId = '';
  /** pcm16 downlink only: opus passes the upstream's packets through. */
  let decoder: opus.OpusEncoder | undefined;
  let codec = 'pcm16';
  let sampleRate = 24000;

  const toClient = (m: Json) => {
    if (client.readyState === WebSocket.OPEN) client.send(JSON.stringify(m));
  };
  const toUpstream = (m: Json) => {
    if (upstream?.readyState === WebSocket.OPEN) upstream.send(JSON.stringify({ ...m, session_id: upstreamSessionId }));
  };

  const onUpstream = (data: RawData, isBinary: boolean) => {
    if (isBinary) {
      if (decoder === undefined) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: true });
        return;
      }
      try {
        const pcm = decoder.decode(data as Buffer);
        if (client.readyState === WebSocket.OPEN) client.send(pcm);
      } catch {
        // an undecodable packet is skipped
      }
      return;
    }
    const m = JSON.parse(data.toString()) as Json;
    switch (m.type) {
      case 'hello':
        upstreamSessionId = String(m.session_id ?? '');
        // Passed-through packets are at the upstream's rate, whatever the client asked for.
        if (decoder === undefined) sampleRate = Number((m.audio_params as Json | undefined)?.sample_rate ?? sampleRate);
        toClient({ type: 'hello', version: 1, sessionId, downlink: { codec, sampleRate, transport: 'binary' } });
        toClient({ type: 'state', state: 'ready' });
        break;
      case 'stt':
        toClient({ type: 'user_text', text: m.text });
        break;
      case 'llm':
        toClient({ type: 'emotion', emotion: m.emotion, emoji: m.text });
        break;
      case 'tts':
        if (m.state === 'start') toClient({ type: 'state', state: 'speaking' });
        else if (m.state === 'sentence_start') toClient({ type: 'assistant_text', text: m.text });
        else if (m.state === 'stop') toClient({ type: 'state', state: 'ready' });
        break;
      case 'mcp':
        toClient({ type: 'mcp', payload: m.payload });
        break;
    }
  };

  const connect = () => {
    const mac = [...randomBytes(6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
    upstream = new WebSocket(upstreamUrl, { headers: { 'Protocol-Version': '1', 'Device-Id': mac, 'Client-Id': sessionId } });
    upstream.on('open', () =>
      upstream!.send(
        JSON.stringify({
          type: 'hello',
          version: 1,
          features: { mcp: true },
          transport: 'websocket',
          audio_params: { format: 'opus', sample_rate: 16000, channels: 1, frame_duration: 60 },
        }),
      ),
    );
    upstream.on('message', onUpstream);
    upstream.on('error', () => {});
    upstream.on('close', () => client.close(4002, 'upstream lost'));
  };

  client.on('message', (data, isBinary) => {
    if (isBinary) {
      if (upstream?.readyState === WebSocket.OPEN) upstream.send(data);
      return;
    }
    let m: Json;
    try {
      m = JSON.parse(data.toString()) as Json;
    } catch {
      return toClient({ type: 'error', code: 'bad_message', message: 'not JSON' });
    }
    switch (m.type) {
      case 'hello': {
        const downlink = (m.downlink ?? {}) as Json;
        if (typeof downlink.sampleRate === 'number') sampleRate = downlink.sampleRate;
        if (downlink.codec === 'opus') codec = 'opus';
        else decoder = new opus.OpusEncoder(sampleRate, 1);
        connect();
        break;
      }
      case 'text':
        toUpstream({ type: 'listen', state: 'detect', text: m.text });
        toClient({ type: 'state', state: 'processing' });
        break;
      case 'listen':
        toUpstream(m.state === 'start' ? { type: 'listen', state: 'start', mode: m.mode ?? 'auto' } : { type: 'listen', state: 'stop' });
        toClient({ type: 'state', state: m.state === 'start' ? 'listening' : 'processing' });
        break;
      case 'abort':
        toUpstream({ type: 'abort', reason: 'client_abort' });
        toClient({ type: 'state', state: 'ready' });
        break;
      case 'ping':
        toClient({ type: 'pong', id: m.id });
        break;
    }
  });
  client.on('error', () => {});
  client.on('close', () => upstream?.close());
});

server.listen(port, host);
// Exit through process.exit so that --cpu-prof, when the bench asks for it, writes its profile.
process.on('SIGTERM', () => process.exit(0));
