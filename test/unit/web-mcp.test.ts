import { expect, it } from 'vitest';
import { answerMcp, METHOD_NOT_FOUND } from '../../web/src/mcp.ts';

// The browser client offers the voice service no MCP tools (web/src/mcp.ts): a request is answered
// "method not found", so that the service need not wait for it to time out; anything else is left alone.

it('a request (method and id) is answered with a JSON-RPC error that echoes its id', () => {
  expect(answerMcp({ jsonrpc: '2.0', id: 7, method: 'tools/list' })).toEqual({
    type: 'mcp',
    payload: { jsonrpc: '2.0', id: 7, error: { code: METHOD_NOT_FOUND, message: 'Method not found', data: { method: 'tools/list' } } },
  });
  expect(METHOD_NOT_FOUND).toBe(-32601);
  expect(answerMcp({ jsonrpc: '2.0', id: 'a', method: 'initialize', params: {} })).toMatchObject({ payload: { id: 'a' } });
});

it('notifications, responses and what is not JSON-RPC get no answer', () => {
  for (const payload of [
    { jsonrpc: '2.0', method: 'notifications/initialized' },
    { jsonrpc: '2.0', id: 3, result: {} },
    { jsonrpc: '2.0', id: null, method: 'x' },
    null,
    'text',
    [1, 2],
  ]) {
    expect(answerMcp(payload)).toBeUndefined();
  }
});
