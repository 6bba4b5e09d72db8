import { existsSync, readFileSync } from 'node:fs';
import type { Dashboard, Panel, RowPanel, VariableModel } from '@grafana/grafana-foundation-sdk/dashboard';
import { defaultDashboard, VariableType } from '@grafana/grafana-foundation-sdk/dashboard';
import { PromQueryFormat, type Dataquery } from '@grafana/grafana-foundation-sdk/prometheus';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { DASHBOARD_PATH, renderDashboard } from '../../dashboards/voicegw.dashboard.ts';
import { createMetrics } from '../../src/observability/metrics.ts';
import { committedDashboard, metricNamesIn, panelQueries, panelsOf, rowsOf, rulesIn, variableQueries } from './queries.ts';

const dashboard = committedDashboard();
const queries = panelQueries(dashboard);
const rules = rulesIn();

/**
 * The fields of an SDK type, checked by the compiler both ways: a field missing here or one the type
 * does not have is a type error, so the sets follow the SDK version in package.json.
 */
const fieldsOf = <T>(fields: Record<keyof T, true>) => new Set(Object.keys(fields));
const DASHBOARD_FIELDS = fieldsOf<Dashboard>({
  id: true, uid: true, title: true, description: true, revision: true, gnetId: true, tags: true, timezone: true, editable: true,
  graphTooltip: true, time: true, timepicker: true, fiscalYearStartMonth: true, liveNow: true, weekStart: true, refresh: true,
  schemaVersion: true, version: true, panels: true, templating: true, annotations: true, links: true, snapshot: true, preload: true,
}); // prettier-ignore
const PANEL_FIELDS = fieldsOf<Panel>({
  type: true, id: true, pluginVersion: true, targets: true, title: true, description: true, transparent: true, datasource: true,
  gridPos: true, links: true, repeat: true, repeatDirection: true, maxPerRow: true, maxDataPoints: true, transformations: true,
  interval: true, timeFrom: true, timeShift: true, hideTimeOverride: true, timeCompare: true, libraryPanel: true, cacheTimeout: true,
  queryCachingTTL: true, options: true, fieldConfig: true,
}); // prettier-ignore
const ROW_FIELDS = fieldsOf<RowPanel>({ type: true, collapsed: true, title: true, datasource: true, gridPos: true, id: true, panels: true, repeat: true });
const VARIABLE_FIELDS = fieldsOf<VariableModel>({
  type: true, name: true, label: true, hide: true, skipUrlSync: true, description: true, query: true, datasource: true, current: true,
  multi: true, allowCustomValue: true, options: true, refresh: true, sort: true, includeAll: true, allValue: true, regex: true,
  staticOptions: true, staticOptionsOrder: true, auto: true, auto_min: true, auto_count: true, definition: true,
}); // prettier-ignore
const QUERY_FIELDS = fieldsOf<Omit<Dataquery, '_implementsDataqueryVariant'>>({
  adhocFilters: true, datasource: true, editorMode: true, exemplar: true, expr: true, format: true, groupByKeys: true, hide: true,
  instant: true, intervalFactor: true, intervalMs: true, legendFormat: true, maxDataPoints: true, queryType: true, range: true,
  refId: true, resultAssertions: true, scopes: true, timeRange: true, interval: true,
}); // prettier-ignore

const unknownFields = (what: string, object: object, known: Set<string>) => Object.keys(object).filter((k) => !known.has(k)).map((k) => `${what}: ${k}`);

describe('the Grafana dashboard', () => {
  it('is exactly what `npm run dashboards` generates from dashboards/voicegw.dashboard.ts', () => {
    expect(readFileSync(DASHBOARD_PATH, 'utf8'), 'dashboards/grafana/voicegw.json is stale: run npm run dashboards').toBe(renderDashboard());
  });

  it('holds only fields of the Foundation SDK’s Dashboard, Panel, RowPanel, VariableModel and Prometheus query types, with values from its enums', () => {
    const unknown = [
      ...unknownFields('dashboard', dashboard, DASHBOARD_FIELDS),
      ...(dashboard.panels ?? []).flatMap((p) => (p.type === 'row' ? unknownFields(`row ${p.title}`, p, ROW_FIELDS) : [])),
      ...panelsOf(dashboard).flatMap((p) => [
        ...unknownFields(`panel ${p.title}`, p, PANEL_FIELDS),
        ...(p.targets ?? []).flatMap((t) => unknownFields(`query of ${p.title}`, t, QUERY_FIELDS)),
      ]),
      ...(dashboard.templating.list ?? []).flatMap((v) => unknownFields(`variable ${v.name}`, v, VARIABLE_FIELDS)),
    ];

    expect(unknown).toEqual([]);
    expect(dashboard.schemaVersion).toBe(defaultDashboard().schemaVersion);
    expect((dashboard.templating.list ?? []).map((v) => v.type).every((t) => Object.values(VariableType).includes(t))).toBe(true);
    const formats = panelsOf(dashboard).flatMap((p) => (p.targets ?? []).map((t) => (t as unknown as Dataquery).format ?? PromQueryFormat.TimeSeries));
    expect(formats.every((f) => Object.values(PromQueryFormat).includes(f))).toBe(true);
  });

  it('has the seven rows Overview, Latency, Flow control, Upstream, Devices and provisioning, Clients and Process, each with panels, laid out on the 24-column grid without overlaps', () => {
    const rows = rowsOf(dashboard);
    expect(rows.map((r) => r.title)).toEqual(['Overview', 'Latency', 'Flow control', 'Upstream', 'Devices and provisioning', 'Clients', 'Process']);
    for (const row of rows) expect(row.panels.length, row.title).toBeGreaterThan(0);

    const cells = new Set<string>();
    for (const p of dashboard.panels ?? []) {
      const { x, y, w, h } = p.gridPos!;
      expect(x + w, `${p.title} fits the grid`).toBeLessThanOrEqual(24);
      for (let i = x; i < x + w; i++) {
        for (let j = y; j < y + h; j++) {
          expect(cells.has(`${i},${j}`), `${p.title} overlaps another panel at ${i},${j}`).toBe(false);
          cells.add(`${i},${j}`);
        }
      }
    }
  });

  it('has at least 25 panels, each with a unique id, a description of what it means and what normal looks like, and a query', () => {
    const panels = panelsOf(dashboard);
    expect(panels.length).toBeGreaterThanOrEqual(25);
    const ids = (dashboard.panels ?? []).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.description ?? '', `${p.title} describes itself`).toMatch(/\S/);
      expect(p.description, `${p.title} says what normal looks like`).toMatch(/Normal/);
      expect(p.targets?.length ?? 0, `${p.title} has a query`).toBeGreaterThan(0);
    }
  });

  it('has a Prometheus datasource variable and a multi-value instance variable over voicegw_build_info, with All matching everything', () => {
    const variables = dashboard.templating.list ?? [];
    expect(variables.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(variables.find((v) => v.name === 'instance')).toMatchObject({
      type: 'query',
      query: 'label_values(voicegw_build_info, instance)',
      datasource: { type: 'prometheus', uid: '${datasource}' },
      multi: true,
      includeAll: true,
      allValue: '.*',
    });
    for (const p of panelsOf(dashboard)) expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
  });

  it('filters every metric of every query by $instance and takes every rate over $__rate_interval', () => {
    for (const q of queries) {
      const selectors = [...q.expr.matchAll(/\bvoicegw_[a-zA-Z0-9_]+(\{[^}]*\})?/g)];
      expect(selectors.length, `${q.panel} ${q.refId} reads a voicegw metric`).toBeGreaterThan(0);
      for (const [selector, matchers] of selectors) expect(matchers ?? '', `${q.panel}: ${selector}`).toContain('instance=~"$instance"');
      for (const [, window] of q.expr.matchAll(/\[([^\]]*)\]/g)) expect(window, `${q.panel} ${q.refId}`).toBe('$__rate_interval');
    }
  });

  it('uses every metric the gateway registers in a panel query or an alert expression', async () => {
    // The gateway's own metrics: prom-client's default process metrics are its choice of what to show.
    const registered = (await createMetrics({ defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name);
    const used = new Set([...queries.map((q) => q.expr), ...rules.map((r) => r.expr)].flatMap(metricNamesIn));
    const unused = registered.filter((name) => ![name, `${name}_bucket`, `${name}_sum`, `${name}_count`].some((n) => used.has(n)));

    expect(registered.length).toBeGreaterThan(20);
    expect(unused, 'registered in src/observability/metrics.ts but on no panel and in no alert').toEqual([]);
  });

  it('mentions no metric the gateway does not register, so a typo or a metric removed from src/ fails here', async () => {
    const known = new Set(
      (await createMetrics().registry.getMetricsAsJSON()).flatMap(({ name, type }) =>
        String(type) === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : String(type) === 'summary' ? [name, `${name}_sum`, `${name}_count`] : [name],
      ),
    );
    const mentions = [
      ...queries.map((q) => ({ where: `panel ${q.panel} ${q.refId}`, expr: q.expr })),
      ...variableQueries(dashboard).map((v) => ({ where: `variable ${v.name}`, expr: v.query })),
      ...rules.map((r) => ({ where: `rule ${r.name}`, expr: r.expr })),
    ];
    const unknown = mentions.flatMap(({ where, expr }) => metricNamesIn(expr).filter((n) => !known.has(n)).map((n) => `${where}: ${n}`));

    expect([...new Set(unknown)]).toEqual([]);
  });

  it('comes with Grafana provisioning for a Prometheus datasource and a file provider of the dashboard folder', () => {
    const provisioning = new URL('../../dashboards/grafana/provisioning/', import.meta.url);
    const datasources = parse(readFileSync(new URL('datasource.yml', provisioning), 'utf8')) as { apiVersion: number; datasources: Record<string, unknown>[] };
    const providers = parse(readFileSync(new URL('dashboards.yml', provisioning), 'utf8')) as { apiVersion: number; providers: Record<string, any>[] };

    expect(datasources.apiVersion).toBe(1);
    expect(datasources.datasources).toContainEqual(expect.objectContaining({ type: 'prometheus', access: 'proxy', url: expect.any(String) }));
    expect(providers.apiVersion).toBe(1);
    expect(providers.providers).toContainEqual(expect.objectContaining({ type: 'file', options: expect.objectContaining({ path: expect.any(String) }) }));
    expect(existsSync(DASHBOARD_PATH)).toBe(true);
  });
});
