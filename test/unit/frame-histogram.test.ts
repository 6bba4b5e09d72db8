import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/observability/metrics.ts';

describe('FrameHistogram', () => {
  it('renders cumulative buckets, +Inf, sum and count in the Prometheus format prom-client uses', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    for (const v of [0.00005, 0.0003, 0.0003, 0.02, 7]) metrics.frameLatency.observe(v);
    const lines = (await metrics.registry.getSingleMetricAsString('voicegw_frame_latency_seconds')).split('\n');
    expect(lines).toContain('# TYPE voicegw_frame_latency_seconds histogram');
    expect(lines).toContain('voicegw_frame_latency_seconds_bucket{le="0.0001"} 1');
    expect(lines).toContain('voicegw_frame_latency_seconds_bucket{le="0.0005"} 3');
    expect(lines).toContain('voicegw_frame_latency_seconds_bucket{le="0.025"} 4');
    expect(lines).toContain('voicegw_frame_latency_seconds_bucket{le="1"} 4');
    expect(lines).toContain('voicegw_frame_latency_seconds_bucket{le="+Inf"} 5');
    expect(lines).toContain('voicegw_frame_latency_seconds_count 5');
    expect(lines.find((l) => l.startsWith('voicegw_frame_latency_seconds_sum '))).toMatch(/ 7\.0206/);
  });

  it('starts again from zero when the registry resets its metrics', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    metrics.frameInterval.observe(0.06);
    metrics.registry.resetMetrics();
    const text = await metrics.registry.getSingleMetricAsString('voicegw_frame_interval_seconds');
    expect(text).toContain('voicegw_frame_interval_seconds_count 0');
  });
});
