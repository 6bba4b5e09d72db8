import { AggregatorRegistry } from 'prom-client';
import type { MetricsJson } from './messages.ts';

/**
 * One exposition from the main thread's registry and every worker's: counters and histograms sum, and
 * gauges sum unless a metric names another aggregator (prom-client's `aggregator` option).
 */
export function mergeMetrics(own: MetricsJson, workers: MetricsJson[]): Promise<string> {
  // The process metrics are the main thread's alone, nothing to merge them with: 'omit', meant for a
  // cluster of processes each with its own start time, would only lose process_start_time_seconds.
  const main = own.map((m) => (m.aggregator === 'omit' ? { ...m, aggregator: 'first' as const } : m));
  return AggregatorRegistry.aggregate([main, ...workers]).metrics();
}
