import { WebSocketServer, type WebSocket } from 'ws';
import type { Speech } from '../../src/sim/speech.ts';
import type { Resources } from './gateway.ts';

/** A hand-made xiaozhi server for what the simulator does not do: `onMessage` decides everything. */
export async function fakeUpstream(res: Resources, onMessage: (ws: WebSocket, message: Record<string, unknown>) => void): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      if (!isBinary) onMessage(ws, JSON.parse(String(data)) as Record<string, unknown>);
    });
  });
  res.add(
    () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  );
  return `ws://127.0.0.1:${(wss.address() as { port: number }).port}/xiaozhi/v1/`;
}

export const sendJson = (ws: WebSocket, message: Record<string, unknown>) => ws.send(JSON.stringify(message));

export const SERVER_HELLO = {
  type: 'hello',
  version: 1,
  transport: 'websocket',
  session_id: 'fake',
  audio_params: { format: 'opus', sample_rate: 24000, channels: 1, frame_duration: 60 },
};

/**
 * The whole speech reply to `text` at once, as a bursting server sends it; `extra` goes in after the
 * first `at` packets of the first sentence, and `after` follows the tts stop.
 */
export function sendSpeechReply(ws: WebSocket, speech: Speech, text: unknown, options: { extra?: Buffer; at?: number; after?: Record<string, unknown> } = {}): void {
  sendJson(ws, { type: 'stt', text });
  sendJson(ws, { type: 'llm', text: '😊', emotion: 'happy' });
  sendJson(ws, { type: 'tts', state: 'start' });
  speech.sentences.forEach((sentence, s) => {
    sendJson(ws, { type: 'tts', state: 'sentence_start', text: sentence.text });
    sentence.packets.forEach((packet, i) => {
      if (s === 0 && i === options.at && options.extra !== undefined) ws.send(options.extra);
      ws.send(packet);
    });
  });
  sendJson(ws, { type: 'tts', state: 'stop' });
  if (options.after !== undefined) sendJson(ws, options.after);
}
