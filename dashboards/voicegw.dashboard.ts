// The voicegw Grafana dashboard, built with the Grafana Foundation SDK. `npm run dashboards` writes it to
// dashboards/grafana/voicegw.json, which is committed and provisioned; test/operations/ checks that the file
// is this script's output and runs every query against a real Prometheus.
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import {
  HeatmapCellLayout,
  LegendDisplayMode,
  LegendPlacement,
  SortOrder,
  StackingConfigBuilder,
  StackingMode,
  TooltipDisplayMode,
  VizLegendOptionsBuilder,
  VizTooltipOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import {
  DashboardBuilder,
  DashboardCursorSync,
  DatasourceVariableBuilder,
  QueryVariableBuilder,
  RowBuilder,
  VariableRefresh,
  VariableSort,
  type Dashboard,
} from '@grafana/grafana-foundation-sdk/dashboard';
import {
  HeatmapColorMode,
  HeatmapColorOptionsBuilder,
  HeatmapColorScale,
  PanelBuilder as HeatmapPanel,
  RowsHeatmapOptionsBuilder,
  YAxisConfigBuilder,
} from '@grafana/grafana-foundation-sdk/heatmap';
import { DataqueryBuilder, PromQueryFormat } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as TablePanel } from '@grafana/grafana-foundation-sdk/table';
import { PanelBuilder as TimeseriesPanel } from '@grafana/grafana-foundation-sdk/timeseries';

export const DASHBOARD_PATH = new URL('grafana/voicegw.json', import.meta.url);

const datasource = { type: 'prometheus', uid: '${datasource}' };

/** The instance filter every query carries, with any further matchers. */
const sel = (...matchers: string[]) => `{${['instance=~"$instance"', ...matchers].join(',')}}`;
/** A per-second rate over Grafana's scrape-aware window. */
const rate = (metric: string, ...matchers: string[]) => `rate(${metric}${sel(...matchers)}[$__rate_interval])`;
const quantile = (q: number, histogram: string) => `histogram_quantile(${q}, sum by (le) (${rate(`${histogram}_bucket`)}))`;
const percentiles = (histogram: string, qs: number[]) => qs.map((q) => ({ expr: quantile(q, histogram), legend: `p${q * 100}` }));

interface Query {
  expr: string;
  legend?: string;
}

interface PanelSpec {
  title: string;
  description: string;
  queries: Query[];
  unit?: string;
  stack?: boolean;
}

function target(query: Query, i: number, format?: PromQueryFormat) {
  const t = new DataqueryBuilder().refId(String.fromCharCode(65 + i)).datasource(datasource).expr(query.expr);
  if (query.legend !== undefined) t.legendFormat(query.legend);
  return format === undefined ? t : t.format(format);
}

function timeseries(spec: PanelSpec) {
  const panel = new TimeseriesPanel()
    .title(spec.title)
    .description(spec.description)
    .datasource(datasource)
    .unit(spec.unit ?? 'short')
    .min(0)
    .span(8)
    .height(8)
    .fillOpacity(spec.stack === true ? 30 : 10)
    .legend(new VizLegendOptionsBuilder().showLegend(true).displayMode(LegendDisplayMode.List).placement(LegendPlacement.Bottom).calcs([]))
    .tooltip(new VizTooltipOptionsBuilder().mode(TooltipDisplayMode.Multi).sort(SortOrder.Descending));
  if (spec.stack === true) panel.stacking(new StackingConfigBuilder().mode(StackingMode.Normal));
  spec.queries.forEach((q, i) => panel.withTarget(target(q, i)));
  return panel;
}

/** A Prometheus histogram's buckets as a heatmap: counts per bucket over time, no client-side bucketing. */
function heatmap(spec: { title: string; description: string; histogram: string; unit: string }) {
  return new HeatmapPanel()
    .title(spec.title)
    .description(spec.description)
    .datasource(datasource)
    .span(8)
    .height(8)
    .calculate(false)
    .rowsFrame(new RowsHeatmapOptionsBuilder().layout(HeatmapCellLayout.Le))
    .yAxis(new YAxisConfigBuilder().unit(spec.unit))
    .color(new HeatmapColorOptionsBuilder().mode(HeatmapColorMode.Scheme).scheme('Oranges').scale(HeatmapColorScale.Exponential).exponent(0.5).steps(64).reverse(false))
    .withTarget(target({ expr: `sum by (le) (${rate(`${spec.histogram}_bucket`)})`, legend: '{{le}}' }, 0, PromQueryFormat.Heatmap));
}

/** Info metrics (value 1, the facts in labels) as a table of what runs now. */
function infoTable(spec: { title: string; description: string; expr: string }) {
  return new TablePanel()
    .title(spec.title)
    .description(spec.description)
    .datasource(datasource)
    .span(12)
    .height(6)
    // The value is always 1 and the time is now: only the labels say anything.
    .withTransformation({ id: 'organize', options: { excludeByName: { Time: true, Value: true } } })
    .withTarget(target({ expr: spec.expr }, 0, PromQueryFormat.Table).instant());
}

type AnyPanel = ReturnType<typeof timeseries> | ReturnType<typeof heatmap> | ReturnType<typeof infoTable>;

const rows: [string, AnyPanel[]][] = [
  [
    'Overview',
    [
      timeseries({
        title: 'Sessions active vs capacity',
        description:
          'Client sessions open now, summed over the selected instances, against the sum of their MAX_SESSIONS. ' +
          'Normal: well under the capacity line. At capacity new sessions are refused (close 1013) and /readyz turns 503.',
        queries: [
          { expr: `sum(voicegw_sessions_active${sel()})`, legend: 'active' },
          { expr: `sum(voicegw_sessions_max${sel()})`, legend: 'capacity (MAX_SESSIONS)' },
        ],
      }),
      timeseries({
        title: 'Replies per second, by outcome',
        description:
          'Assistant replies finished per second, by how they ended. Normal: mostly complete; some aborted when users ' +
          'interrupt (barge-in). upstream_lost, client_gone and shutdown should be rare.',
        queries: [{ expr: `sum by (outcome) (${rate('voicegw_replies_total')})`, legend: '{{outcome}}' }],
        unit: 'reqps',
        stack: true,
      }),
      timeseries({
        title: 'Audio frames per second',
        description:
          'Downlink frames handed to client sockets (by codec and transport), Opus packets received from upstreams, and ' +
          'uplink packets sent to them. Normal: about 16.7 frames/s per speaking session (60 ms frames), and pushed ' +
          'follows "from upstream" closely; a lasting gap between the two means frames are dropped or queued.',
        queries: [
          { expr: `sum by (codec, transport) (${rate('voicegw_frames_pushed_total')})`, legend: 'pushed {{codec}}/{{transport}}' },
          { expr: `sum(${rate('voicegw_upstream_frames_total')})`, legend: 'from upstream' },
          { expr: `sum(${rate('voicegw_uplink_frames_total')})`, legend: 'uplink to upstream' },
        ],
      }),
      timeseries({
        title: 'Dropped and failed share of frames',
        description:
          'Frames dropped (by reason) and frames a socket refused (by reason), as a share of the frames received from ' +
          'upstreams. Normal: 0, except "aborted" when users interrupt replies. too_slow means clients cannot keep up; ' +
          'any send failure is a bug or a uWS limit.',
        queries: [
          {
            expr: `sum by (reason) (${rate('voicegw_frames_dropped_total')}) / ignoring (reason) group_left sum(${rate('voicegw_upstream_frames_total')})`,
            legend: 'dropped {{reason}}',
          },
          {
            expr: `sum by (reason) (${rate('voicegw_send_failures_total')}) / ignoring (reason) group_left sum(${rate('voicegw_upstream_frames_total')})`,
            legend: 'failed {{reason}}',
          },
        ],
        unit: 'percentunit',
      }),
      timeseries({
        title: 'Client underruns per minute',
        description:
          "Playout underruns reported by clients (their buffer ran dry mid-reply: the listener heard a gap), per minute, " +
          'all clients together. Normal: 0 or close to it; a rise with steady traffic means late or uneven frames.',
        queries: [{ expr: `60 * sum(${rate('voicegw_client_underruns_total')})`, legend: 'underruns/min' }],
      }),
      timeseries({
        title: 'Sessions ended per minute, by outcome',
        description:
          'Sessions ending per minute, by outcome. Normal: mostly normal and client_gone, and a rare ' +
          'activation_timeout (a user who did not enter their code). upstream_unavailable, upstream_lost, internal, ' +
          'too_slow or refused mean trouble; see the other rows for which.',
        queries: [{ expr: `60 * sum by (outcome) (${rate('voicegw_sessions_total')})`, legend: '{{outcome}}' }],
        stack: true,
      }),
      infoTable({
        title: 'Versions running',
        description:
          'Each selected instance with its voicegw and Node.js versions (voicegw_build_info). Normal: one version ' +
          'everywhere, except during a rollout.',
        expr: `max by (instance, version, node) (voicegw_build_info${sel()})`,
      }),
      infoTable({
        title: 'Slow-client policy',
        description:
          'SLOW_CLIENT_POLICY of each selected instance (voicegw_config_info): drop-oldest drops a slow client’s oldest ' +
          'audio, close ends its session with 4003. Normal: the same policy on every instance.',
        expr: `max by (instance, slow_client_policy) (voicegw_config_info${sel()})`,
      }),
    ],
  ],
  [
    'Latency',
    [
      timeseries({
        title: 'Frame latency through the gateway (p50, p99), and lateness (p99)',
        description:
          'From an Opus packet arriving from the upstream to its frame handed to the client socket (decode, queue, ' +
          'pacing). Normal: p99 of a few milliseconds for sessions without pacing; realtime pacing adds its deliberate ' +
          'hold. A rise with flat traffic points at event-loop lag or queued frames. "lateness p99" leaves out frames held ' +
          'by realtime pacing or waiting for a slow client: it is what admission by load judges against ADMISSION_MAX_LATENESS_MS.',
        queries: [
          ...percentiles('voicegw_frame_latency_seconds', [0.5, 0.99]),
          { expr: quantile(0.99, 'voicegw_frame_lateness_seconds'), legend: 'lateness p99' },
        ],
        unit: 's',
      }),
      timeseries({
        title: 'Time to first audio (p50, p95, p99)',
        description:
          "From the end of the user's input to the reply's first audio frame pushed: what users feel as the " +
          "assistant's reaction time, mostly the voice service's own. Normal: around a second; the alert is at p99 > 5 s.",
        queries: percentiles('voicegw_time_to_first_audio_seconds', [0.5, 0.95, 0.99]),
        unit: 's',
      }),
      heatmap({
        title: 'Frame interval heatmap',
        description:
          'Gaps between consecutive audio frames pushed within one reply, per bucket. Normal: a band near 0 (bursting ' +
          'upstream, no pacing) or at the 60 ms frame clock (realtime pacing). Cells at 300 ms and above are gaps a ' +
          "client's jitter buffer may not hide.",
        histogram: 'voicegw_frame_interval_seconds',
        unit: 's',
      }),
      timeseries({
        title: 'Frame gaps over 300 ms (share)',
        description:
          'Share of frame intervals within replies longer than 300 ms, the same measure as the VoicegwAudioGaps alert ' +
          '(threshold 2%). Normal: near 0.',
        queries: [
          {
            expr: `1 - sum(${rate('voicegw_frame_interval_seconds_bucket', 'le="0.3"')}) / sum(${rate('voicegw_frame_interval_seconds_count')})`,
            legend: 'gaps > 300 ms',
          },
        ],
        unit: 'percentunit',
      }),
      timeseries({
        title: 'Upstream connect time (p50, p99)',
        description:
          "Opening the upstream WebSocket and getting the voice service's hello, per connection (session starts and " +
          'reconnects). Normal: tens of milliseconds to a server nearby; the hello times out at UPSTREAM_HELLO_TIMEOUT_MS.',
        queries: percentiles('voicegw_upstream_connect_seconds', [0.5, 0.99]),
        unit: 's',
      }),
      timeseries({
        title: 'Reply duration (p50, p95)',
        description:
          'From state speaking to the reply being over: how long replies play. Normal: a few seconds, set by what the ' +
          'assistant says; a sudden drop with many aborted replies means users keep interrupting.',
        queries: percentiles('voicegw_reply_duration_seconds', [0.5, 0.95]),
        unit: 's',
      }),
    ],
  ],
  [
    'Flow control',
    [
      timeseries({
        title: 'Queued frames',
        description:
          'Frames waiting in front of client sockets now (all sessions), and the p99 depth of one session’s queue when ' +
          'it had to wait for its socket. Normal: 0 and low single digits; a standing queue means slow clients.',
        queries: [
          { expr: `sum(voicegw_queue_depth_frames${sel()})`, legend: 'queued now' },
          { expr: quantile(0.99, 'voicegw_session_queue_depth_frames'), legend: 'p99 session queue when waiting' },
        ],
      }),
      timeseries({
        title: 'Session buffer memory',
        description:
          'Bytes the gateway holds for all sessions per instance: client queues, pacers and unsent upstream data. ' +
          'Normal: small (kilobytes per session) and bounded; growth with flat sessions means clients not reading.',
        queries: [{ expr: `sum by (instance) (voicegw_session_buffer_bytes${sel()})`, legend: '{{instance}}' }],
        unit: 'bytes',
      }),
      timeseries({
        title: 'Backpressure events per minute',
        description:
          "Times a client socket's buffered amount crossed SOCKET_HIGH_WATER_BYTES, so frames had to wait in the " +
          'session queue. Normal: rare; constant backpressure means clients on slow networks.',
        queries: [{ expr: `60 * sum(${rate('voicegw_backpressure_events_total')})`, legend: 'backpressure/min' }],
      }),
      timeseries({
        title: 'Frames dropped per second, by reason',
        description:
          'Audio frames discarded on purpose: aborted (the user interrupted; expected), too_slow (the slow-client ' +
          'policy dropped a lagging client’s oldest audio), client_gone (the client left mid-reply). Normal: only aborted.',
        queries: [{ expr: `sum by (reason) (${rate('voicegw_frames_dropped_total')})`, legend: '{{reason}}' }],
        stack: true,
      }),
      timeseries({
        title: 'Send failures per second, by reason',
        description:
          'Audio frames a client socket refused: closed (written as the socket closed) or backpressure_limit (uWS ' +
          'buffer limit). Normal: none; the sink writes only below the high-water mark.',
        queries: [{ expr: `sum by (reason) (${rate('voicegw_send_failures_total')})`, legend: '{{reason}}' }],
      }),
      timeseries({
        title: 'Slow clients closed per minute',
        description:
          'Sessions ended because the client could not keep up (outcome too_slow), and closes with code 4003. ' +
          'Normal: 0 with SLOW_CLIENT_POLICY=drop-oldest; with close, a few on bad networks. The two lines should match.',
        queries: [
          { expr: `60 * sum(${rate('voicegw_sessions_total', 'outcome="too_slow"')})`, legend: 'sessions too_slow' },
          { expr: `60 * sum(${rate('voicegw_client_closes_total', 'code="4003"')})`, legend: 'closes 4003' },
        ],
      }),
      timeseries({
        title: 'Buffer overflows per minute, by buffer',
        description:
          "Times a session's buffer reached its bound and the gateway dropped audio or closed the session: " +
          'client_queue, pacer, upstream. Normal: 0; client_queue overflows go with too_slow drops.',
        queries: [{ expr: `60 * sum by (buffer) (${rate('voicegw_buffer_overflows_total')})`, legend: '{{buffer}}' }],
      }),
      timeseries({
        title: 'Uplink packets dropped per second',
        description:
          "Microphone packets that could not go upstream: no open upstream (connecting or reconnecting), or one not " +
          'reading fast enough. Normal: 0, with short blips during reconnects.',
        queries: [{ expr: `sum(${rate('voicegw_uplink_frames_dropped_total')})`, legend: 'dropped' }],
      }),
      timeseries({
        title: 'Sessions refused per minute, by reason',
        description:
          'New sessions turned away with overloaded and close 1013, by reason: capacity (MAX_SESSIONS reached), load ' +
          "(a worker's event loop lags or its frames leave late: admission by load), draining (shutting down). Normal: 0; " +
          'draining during rollouts. A second line counts instances with a worker refusing on load now.',
        queries: [
          { expr: `60 * sum by (reason) (${rate('voicegw_sessions_refused_total')})`, legend: '{{reason}}' },
          { expr: `sum(1 - min by (instance) (voicegw_admission_open${sel()}))`, legend: 'instances refusing on load' },
        ],
      }),
    ],
  ],
  [
    'Upstream',
    [
      timeseries({
        title: 'Upstream errors per minute, by kind',
        description:
          'Faults talking to the voice service: connect, hello_timeout, bad_hello, closed, socket, stall, not_reading; ' +
          "and before connecting, provision (the OTA server or the device store failed) and activation_timeout (the user's " +
          'code was not bound in time; see Devices and provisioning). Normal: near 0; a burst of connect or hello_timeout ' +
          'means the service is down or overloaded.',
        queries: [{ expr: `60 * sum by (kind) (${rate('voicegw_upstream_errors_total')})`, legend: '{{kind}}' }],
        stack: true,
      }),
      timeseries({
        title: 'Upstream reconnects per minute, by outcome',
        description:
          'Sessions that lost their upstream and tried to get it back: recovered, or failed (the session closed with ' +
          '4002 after UPSTREAM_RECONNECT_ATTEMPTS). Normal: few, nearly all recovered.',
        queries: [{ expr: `60 * sum by (outcome) (${rate('voicegw_upstream_reconnects_total')})`, legend: '{{outcome}}' }],
        stack: true,
      }),
      timeseries({
        title: 'Unknown upstream messages per minute, by type',
        description:
          'Upstream messages the gateway tolerates without acting on (system, alert, custom, iot, unknown). Normal: ' +
          'steady at whatever the voice service sends; a new type or a jump follows a server change.',
        queries: [{ expr: `60 * sum by (type) (${rate('voicegw_upstream_unknown_messages_total')})`, legend: '{{type}}' }],
      }),
      timeseries({
        title: 'Decode errors and concealed frames per minute',
        description:
          'Upstream Opus packets that would not decode, and the concealment frames made in their place so that ' +
          'playback keeps time. Normal: 0; a steady rate means a broken encoder or framing mismatch upstream.',
        queries: [
          { expr: `60 * sum(${rate('voicegw_decode_errors_total')})`, legend: 'decode errors' },
          { expr: `60 * sum(${rate('voicegw_concealed_frames_total')})`, legend: 'concealed frames' },
        ],
      }),
      timeseries({
        title: 'Upstream connections per minute',
        description:
          'Upstream connections that reached the hello, per minute: one per session start plus one per recovered ' +
          'reconnect. Normal: follows the session start rate; more means sessions keep reconnecting.',
        queries: [{ expr: `60 * sum(${rate('voicegw_upstream_connect_seconds_count')})`, legend: 'connected' }],
      }),
    ],
  ],
  [
    'Devices and provisioning',
    [
      timeseries({
        title: 'OTA requests per minute, by outcome',
        description:
          'Requests to the xiaozhi OTA server (UPSTREAM_OTA_URL) for a device\'s WebSocket URL and token, per minute, by ' +
          'outcome: ok; activation (the server wants the device bound first: repeated while its user holds a code); ' +
          'http_error, malformed, no_websocket and unreachable, each ending its session with upstream_unavailable ' +
          '(4002), except no_websocket when UPSTREAM_URL is set as the fallback. Normal: only ok and activation, about ' +
          'one per named user per UPSTREAM_OTA_MAX_AGE_MS plus one per session of a client without a user; nothing at ' +
          'all without UPSTREAM_OTA_URL. Failures over 20% are the VoicegwOtaFailing alert: check the OTA server and the URL.',
        queries: [{ expr: `60 * sum by (outcome) (${rate('voicegw_ota_requests_total')})`, legend: '{{outcome}}' }],
        stack: true,
      }),
      timeseries({
        title: 'Activations: pending now, and per hour by outcome',
        description:
          "Sessions waiting now for their user to enter the device's 6-digit code in the voice service's console, and " +
          'activations ended per hour: activated; timeout (no one bound the code within ACTIVATION_TIMEOUT_MS: the ' +
          'session ended with activation_timeout, 4002); failed (the OTA server failed during the activation). Normal: ' +
          'a few pending and activated while new users sign up (once per user), timeouts a minority (users who walk ' +
          'away). Pending piling up with nothing activated means codes are not being bound: see VoicegwActivationsTimingOut.',
        queries: [
          { expr: `sum(voicegw_activations_pending${sel()})`, legend: 'pending now' },
          { expr: `3600 * sum by (outcome) (${rate('voicegw_activations_total')})`, legend: '{{outcome}} per hour' },
        ],
      }),
      timeseries({
        title: 'Device store errors per minute, by operation',
        description:
          "Failed operations on the device store (PostgreSQL at DATABASE_URL, else SQLite in DATA_DIR), by operation. " +
          "Failing to load a session's device (a read, or the write that makes a new user's device) ends that named " +
          "user's session with upstream_unavailable (4002); failing to keep what a session learnt (its endpoint, its " +
          'activation) is logged and the session goes on. Normal: 0 at all times; any lasting rate is the ' +
          'VoicegwDeviceStoreErrors alert: check the database and its disk.',
        queries: [{ expr: `60 * sum by (operation) (${rate('voicegw_store_errors_total')})`, legend: '{{operation}}' }],
      }),
    ],
  ],
  [
    'Clients',
    [
      timeseries({
        title: 'Underruns per minute of audio played',
        description:
          "Clients' playout underruns divided by the audio they played: gaps a listener hears per minute of speech, " +
          'the same measure as the VoicegwClientUnderruns alert (threshold 1). Normal: well under 1.',
        queries: [
          {
            expr: `60 * sum(${rate('voicegw_client_underruns_total')}) / sum(${rate('voicegw_client_played_seconds_total')})`,
            legend: 'underruns per minute played',
          },
        ],
      }),
      heatmap({
        title: 'Client buffer depth heatmap',
        description:
          'Audio buffered in clients when they report playout (bufferedMs). Normal: a band around the jitter buffer ' +
          'the client aims for; mass near 0 while speaking means clients are about to underrun.',
        histogram: 'voicegw_client_buffer_seconds',
        unit: 's',
      }),
      timeseries({
        title: 'Audio played by clients (seconds per second)',
        description:
          'Seconds of reply audio clients report having played, per second: about the number of clients listening at ' +
          'once. Normal: follows the speaking sessions; less than the frames pushed means clients fall behind.',
        queries: [{ expr: `sum(${rate('voicegw_client_played_seconds_total')})`, legend: 'played s/s' }],
      }),
      timeseries({
        title: 'Bad messages per minute, by reason',
        description:
          'Client messages refused (not_json, no_type, unknown_type, bad_field, too_large) and upstream messages that ' +
          'would not parse (upstream_invalid). Normal: near 0; a jump after a client release is a client bug.',
        queries: [{ expr: `60 * sum by (reason) (${rate('voicegw_bad_messages_total')})`, legend: '{{reason}}' }],
        stack: true,
      }),
      timeseries({
        title: 'Sessions closed per minute, by close code',
        description:
          'WebSocket close codes sessions ended with: 1000 normal, 1001 going away, 1006 lost, 1009 too large, 1011 ' +
          'internal, 1013 overloaded, 4001 no hello, 4002 upstream unavailable (or activation timeout), 4003 too slow. ' +
          'Normal: mostly 1000 and 1006.',
        queries: [{ expr: `60 * sum by (code) (${rate('voicegw_client_closes_total')})`, legend: '{{code}}' }],
        stack: true,
      }),
      timeseries({
        title: 'Client messages per second, by type',
        description:
          'Valid client text messages by type (hello, listen, text, abort, mcp, ping, playout). Normal: hello per ' +
          'session start, listen/text per turn, playout at the clients’ report rate.',
        queries: [{ expr: `sum by (type) (${rate('voicegw_client_messages_total')})`, legend: '{{type}}' }],
        unit: 'reqps',
        stack: true,
      }),
    ],
  ],
  [
    'Process',
    [
      timeseries({
        title: 'CPU used (cores)',
        description:
          'CPU time per second of each gateway process (user and system), in cores. Normal: well below the cores the ' +
          'instance has; near them, frames queue and latency rises.',
        queries: [{ expr: `sum by (instance) (${rate('voicegw_process_cpu_seconds_total')})`, legend: '{{instance}}' }],
      }),
      timeseries({
        title: 'Memory: RSS and heap',
        description:
          'Resident memory and V8 heap (used and total) per instance. Normal: flat at steady load, rising and ' +
          'falling with sessions; steady growth at flat load is a leak.',
        queries: [
          { expr: `sum by (instance) (voicegw_process_resident_memory_bytes${sel()})`, legend: 'RSS {{instance}}' },
          { expr: `sum by (instance) (voicegw_nodejs_heap_size_used_bytes${sel()})`, legend: 'heap used {{instance}}' },
          { expr: `sum by (instance) (voicegw_nodejs_heap_size_total_bytes${sel()})`, legend: 'heap total {{instance}}' },
        ],
        unit: 'bytes',
      }),
      timeseries({
        title: 'Event-loop lag p99',
        description:
          'How late the event loop runs, p99 per instance. Every frame leaves through it, so lag adds to every ' +
          "frame's delivery. Normal: a few milliseconds; the alert is at 100 ms.",
        queries: [{ expr: `max by (instance) (voicegw_nodejs_eventloop_lag_p99_seconds${sel()})`, legend: '{{instance}}' }],
        unit: 's',
      }),
      timeseries({
        title: 'Event-loop lag for admission (worst worker)',
        description:
          "The event loop's delay over each one-second admission window (p99), from the worst worker of each instance: " +
          'over ADMISSION_MAX_LAG_MS (default 50 ms) that worker refuses new sessions until it has stayed under half of ' +
          'it for three seconds. Normal: a few milliseconds, far under the bound.',
        queries: [{ expr: `max by (instance) (voicegw_event_loop_lag_seconds${sel()})`, legend: '{{instance}}' }],
        unit: 's',
      }),
      timeseries({
        title: 'Time in garbage collection, by kind',
        description:
          'Share of time each process spends in GC pauses, by kind (minor, major, incremental, weakcb). Normal: ' +
          'a few percent, mostly minor; sustained major GC means memory pressure.',
        queries: [{ expr: `sum by (instance, kind) (${rate('voicegw_nodejs_gc_duration_seconds_sum')})`, legend: '{{kind}} {{instance}}' }],
        unit: 'percentunit',
        stack: true,
      }),
      timeseries({
        title: 'Open file descriptors',
        description:
          'File descriptors open in each process: about two sockets per session (client and upstream) plus a few. ' +
          'Normal: follows sessions; far below the limit, which is the second line.',
        queries: [
          { expr: `sum by (instance) (voicegw_process_open_fds${sel()})`, legend: 'open {{instance}}' },
          { expr: `max by (instance) (voicegw_process_max_fds${sel()})`, legend: 'limit {{instance}}' },
        ],
      }),
    ],
  ],
];

export function voicegwDashboard(): Dashboard {
  const dashboard = new DashboardBuilder('voicegw')
    .uid('voicegw')
    .description('voicegw, the real-time voice gateway: sessions, audio flow, latency, upstream, devices, clients, process.')
    .tags(['voicegw'])
    .time({ from: 'now-1h', to: 'now' })
    .refresh('30s')
    .tooltip(DashboardCursorSync.Crosshair)
    .withVariable(new DatasourceVariableBuilder('datasource').label('Data source').type('prometheus'))
    .withVariable(
      new QueryVariableBuilder('instance')
        .label('Instance')
        .datasource(datasource)
        .query('label_values(voicegw_build_info, instance)')
        .definition('label_values(voicegw_build_info, instance)')
        .refresh(VariableRefresh.OnTimeRangeChanged)
        .sort(VariableSort.NaturalAsc)
        .multi(true)
        .includeAll(true)
        .allValue('.*')
        .current({ text: ['All'], value: ['$__all'] }),
    );
  let id = 0;
  // Rows stay expanded: Grafana shows an expanded row's panels from the top level after it, not from row.panels.
  for (const [title, panels] of rows) {
    dashboard.withRow(new RowBuilder(title).id(++id));
    for (const panel of panels) dashboard.withPanel(panel.id(++id));
  }
  return dashboard.build();
}

export function renderDashboard(): string {
  return `${JSON.stringify(voicegwDashboard(), null, 2)}\n`;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  writeFileSync(DASHBOARD_PATH, renderDashboard());
  process.stdout.write(`wrote ${DASHBOARD_PATH.pathname}\n`);
}
