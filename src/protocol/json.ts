// One JSON object off the wire, from a client or an upstream. Deep nesting is refused here, once:
// JSON.parse takes it, but re-serialising it later (a pong's id, an mcp payload) would throw.

export const MAX_JSON_DEPTH = 32;

export type JsonObjectParse =
  | { ok: true; value: Record<string, unknown> }
  | { ok: false; reason: 'not_json' | 'not_object' | 'too_deep'; detail: string };

export function parseJsonObject(text: string): JsonObjectParse {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'not_json', detail: 'not valid JSON' };
  }
  if (!isObject(value)) return { ok: false, reason: 'not_object', detail: 'not a JSON object' };
  if (depthOf(value) > MAX_JSON_DEPTH) return { ok: false, reason: 'too_deep', detail: `nested deeper than ${MAX_JSON_DEPTH} levels` };
  return { ok: true, value };
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Iterative, so that the check itself cannot overflow the stack; stops once past the limit. */
function depthOf(root: object): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[root, 1]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (value === null || typeof value !== 'object') continue;
    if (depth > deepest) deepest = depth;
    if (deepest > MAX_JSON_DEPTH) return deepest;
    for (const child of Object.values(value)) stack.push([child, depth + 1]);
  }
  return deepest;
}
