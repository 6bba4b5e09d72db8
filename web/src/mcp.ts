// MCP (docs/protocol.md: `mcp`): the voice service's tools may call on the device with JSON-RPC requests.
// This page offers no tools, so each request is answered "method not found" (JSON-RPC 2.0, -32601) rather
// than left to time out on the service's side. Notifications (no id) and responses (no method) want no
// answer.
import type { ClientMessage } from './protocol.ts';

export const METHOD_NOT_FOUND = -32601;

/** The answer to an `mcp` payload from the gateway, or undefined when it wants none. */
export function answerMcp(payload: unknown): ClientMessage | undefined {
  if (typeof payload !== 'object' || payload === null) return undefined;
  const { id, method } = payload as Record<string, unknown>;
  if (typeof method !== 'string' || (typeof id !== 'string' && typeof id !== 'number')) return undefined;
  return { type: 'mcp', payload: { jsonrpc: '2.0', id, error: { code: METHOD_NOT_FOUND, message: 'Method not found', data: { method } } } };
}
