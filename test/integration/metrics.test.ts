import { afterEach, describe, expect, it } from 'vitest';
import { hasMetric, httpGet, isError, metricSum, metricValue, poll, Resources } from '../support/gateway.ts';

const res = new Resources();
afterEach(() => res.dispose());

async function scrape(port: number): Promise<string> {
  const { status, body } = await httpGet(port, '/metrics');
  expect(status).toBe(200);
  return body;
}

describe('metrics and HTTP routes', () => {
  it('counts one whole reply to one client, and the session when it ends', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const client = await res.client(gw.url);
    await client.hello();
    await client.textReply('Count this');
    const n = sim.replyFrames();
    const during = await scrape(gw.port);

    expect(client.received.binary).toHaveLength(n);
    expect(metricValue(during, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"')).toBe(n);
    expect(metricValue(during, 'voicegw_upstream_frames_total')).toBe(n);
    expect(metricValue(during, 'voicegw_frame_latency_seconds_count')).toBe(n);
    expect(metricValue(during, 'voicegw_sessions_active')).toBe(1);
    expect(metricValue(during, 'voicegw_client_messages_total', 'type="text"')).toBe(1);
    expect(metricValue(during, 'voicegw_client_messages_total', 'type="hello"')).toBe(1);
    expect(metricValue(during, 'voicegw_time_to_first_audio_seconds_count')).toBe(1);
    expect(metricValue(during, 'voicegw_upstream_connect_seconds_count')).toBe(1);
    expect(metricValue(during, 'voicegw_decode_errors_total')).toBe(0);
    // Absent or zero: no frame failed to go out.
    expect(metricSum(during, 'voicegw_send_failures_total')).toBe(0);
    expect(metricSum(during, 'voicegw_frames_dropped_total')).toBe(0);

    client.close();
    await client.closed;
    const after = await poll(
      () => scrape(gw.port),
      (text) => metricValue(text, 'voicegw_sessions_active') === 0,
    );
    expect(metricValue(after, 'voicegw_sessions_active')).toBe(0);
    expect(metricValue(after, 'voicegw_sessions_total', 'outcome="normal"')).toBe(1);
    expect(metricSum(after, 'voicegw_sessions_total')).toBe(1);
    expect(metricValue(after, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"')).toBe(n);
  });

  it('counts frames under the negotiated codec and transport', async () => {
    const sim = await res.simulator();
    const gw = await res.gateway({ UPSTREAM_URL: sim.url });
    const [json, opus] = await Promise.all([res.client(gw.url), res.client(gw.url)]);
    await json.hello({ downlink: { transport: 'json' } });
    await opus.hello({ downlink: { codec: 'opus' } });
    await Promise.all([json.textReply('a'), opus.textReply('b')]);
    const text = await scrape(gw.port);

    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="json"')).toBe(sim.replyFrames());
    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="opus",transport="binary"')).toBe(sim.replyFrames());
    expect(metricValue(text, 'voicegw_frames_pushed_total', 'codec="pcm16",transport="binary"')).toBe(0);
    expect(metricValue(text, 'voicegw_upstream_frames_total')).toBe(2 * sim.replyFrames());
  });

  it('counts one not_json bad message after one non-JSON text frame', async () => {
    const gw = await res.gateway();
    const client = await res.client(gw.url);
    await client.hello();
    client.send('{definitely not json');
    await client.next(isError('bad_message'));
    const text = await scrape(gw.port);

    expect(metricValue(text, 'voicegw_bad_messages_total', 'reason="not_json"')).toBe(1);
    expect(metricSum(text, 'voicegw_bad_messages_total')).toBe(1);
  });

  it('serves the Prometheus text format with the process metrics', async () => {
    const gw = await res.gateway();
    const response = await fetch(`http://127.0.0.1:${gw.port}/metrics`);
    const text = await response.text();

    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(hasMetric(text, 'voicegw_process_cpu_user_seconds_total')).toBe(true);
    expect(hasMetric(text, 'voicegw_process_resident_memory_bytes')).toBe(true);
    expect(hasMetric(text, 'voicegw_nodejs_eventloop_lag_seconds')).toBe(true);
    expect(text).toContain('# TYPE voicegw_frame_latency_seconds histogram');
    // Never a per-session label.
    expect(text).not.toMatch(/session_?id=/i);
  });

  it('answers /healthz with 200 "ok", /readyz with 200 and an unknown path with 404', async () => {
    const gw = await res.gateway();

    expect(await httpGet(gw.port, '/healthz')).toEqual({ status: 200, body: 'ok' });
    expect((await httpGet(gw.port, '/readyz')).status).toBe(200);
    expect((await httpGet(gw.port, '/no/such/path')).status).toBe(404);
    expect((await httpGet(gw.port, '/v1/voice')).status).not.toBe(200);
  });
});
