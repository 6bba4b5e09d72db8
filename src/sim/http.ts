// The simulator's plain HTTP (OTA, activation, console): a request's headers and body in, an answer out.
// A peer may send anything, or vanish: that gets an answer or nothing, never an exception.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { HttpReply, HttpRequest } from './provisioning.ts';

/** Far more than any OTA body (the firmware's full system info is about 2 KiB). */
const MAX_BODY_BYTES = 64 * 1024;

/** Header names are lowercase, as Node gives them; repeated headers are joined. */
export function headersOf(req: IncomingMessage): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return headers;
}

/** The request with its body parsed as JSON when it is JSON; undefined when the body is too large or the peer went away. */
export function readRequest(req: IncomingMessage): Promise<HttpRequest | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('error', () => resolve(undefined));
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) return resolve(undefined);
      const raw = Buffer.concat(chunks).toString('utf8');
      resolve({ path: (req.url ?? '/').split('?')[0]!, method: req.method ?? 'GET', headers: headersOf(req), body: parseBody(raw) });
    });
  });
}

export function writeAnswer(res: ServerResponse, answer: HttpReply): void {
  const json = typeof answer.body !== 'string';
  const body = json ? JSON.stringify(answer.body) : (answer.body as string);
  res.writeHead(answer.status, { 'Content-Type': json ? 'application/json' : 'text/plain; charset=utf-8' }).end(body);
}

function parseBody(raw: string): unknown {
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    return raw;
  }
}
