// What the operations tests read from the committed files: the dashboard's panels and queries, the
// Prometheus config and its rule files.
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Dashboard, Panel, RowPanel } from '@grafana/grafana-foundation-sdk/dashboard';
import { parse } from 'yaml';
import { DASHBOARD_PATH } from '../../dashboards/voicegw.dashboard.ts';

export const PROMETHEUS_DIR = fileURLToPath(new URL('../../dashboards/prometheus/', import.meta.url));
export const PROMETHEUS_CONFIG = join(PROMETHEUS_DIR, 'prometheus.yml');
export const ALERTS_PATH = join(PROMETHEUS_DIR, 'alerts.yml');

export function committedDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as Dashboard;
}

const isRow = (p: Panel | RowPanel): p is RowPanel => p.type === 'row';

/** Each row with its panels: nested in it when collapsed, else the top-level panels up to the next row. */
export function rowsOf(dashboard: Dashboard): { title: string; panels: Panel[] }[] {
  const rows: { title: string; panels: Panel[] }[] = [];
  for (const p of dashboard.panels ?? []) {
    if (isRow(p)) rows.push({ title: p.title ?? '', panels: [...p.panels] });
    else if (rows.length === 0) rows.push({ title: '', panels: [p] });
    else rows.at(-1)!.panels.push(p);
  }
  return rows;
}

export const panelsOf = (dashboard: Dashboard): Panel[] => rowsOf(dashboard).flatMap((r) => r.panels);

export interface PanelQuery {
  panel: string;
  refId: string;
  expr: string;
  /** The panel asks for the last value only (a table), not a range. */
  instant: boolean;
}

export function panelQueries(dashboard: Dashboard): PanelQuery[] {
  return panelsOf(dashboard).flatMap((panel) =>
    (panel.targets ?? []).map((t) => {
      const target = t as unknown as { refId?: string; expr: string; instant?: boolean };
      return { panel: panel.title ?? '', refId: target.refId ?? '', expr: target.expr, instant: target.instant === true };
    }),
  );
}

/** The query of each query variable, e.g. label_values(voicegw_build_info, instance). */
export function variableQueries(dashboard: Dashboard): { name: string; query: string }[] {
  return (dashboard.templating.list ?? []).flatMap((v) => (v.type === 'query' && typeof v.query === 'string' ? [{ name: v.name, query: v.query }] : []));
}

/** The Grafana variables a query may hold, as a Prometheus with a few minutes of data should see them. */
export function toPromQL(expr: string): string {
  return expr
    .replaceAll('$instance', '.*')
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__interval', '15s')
    .replaceAll('$__range', '5m');
}

export interface PrometheusConfig {
  global?: Record<string, unknown>;
  rule_files?: string[];
  scrape_configs?: ({ job_name: string } & Record<string, unknown>)[];
  [key: string]: unknown;
}

export function committedPrometheusConfig(): PrometheusConfig {
  if (!existsSync(PROMETHEUS_CONFIG)) throw new Error(`${PROMETHEUS_CONFIG} is missing: the scrape config the tests run Prometheus with`);
  return parse(readFileSync(PROMETHEUS_CONFIG, 'utf8')) as PrometheusConfig;
}

/** The rule files prometheus.yml loads (relative to it), and alerts.yml even if it does not. */
export function ruleFiles(): string[] {
  const listed = existsSync(PROMETHEUS_CONFIG) ? (committedPrometheusConfig().rule_files ?? []) : [];
  const files = listed.map((f) => (isAbsolute(f) ? f : resolve(PROMETHEUS_DIR, f)));
  if (existsSync(ALERTS_PATH) && !files.includes(ALERTS_PATH)) files.push(ALERTS_PATH);
  for (const f of files) if (/[*?[]/.test(f)) throw new Error(`rule_files entry ${f}: globs are not supported by these tests`);
  return files;
}

export interface Rule {
  /** The alert's or recording rule's name. */
  name: string;
  expr: string;
  file: string;
}

export function rulesIn(files: string[] = ruleFiles()): Rule[] {
  return files.flatMap((file) => {
    const doc = parse(readFileSync(file, 'utf8')) as { groups?: { rules?: { alert?: string; record?: string; expr: string }[] }[] };
    return (doc.groups ?? []).flatMap((g) => (g.rules ?? []).map((r) => ({ name: r.alert ?? r.record ?? '', expr: String(r.expr), file })));
  });
}

/** Every `voicegw_…` name an expression mentions. */
export function metricNamesIn(expr: string): string[] {
  return [...expr.matchAll(/\bvoicegw_[a-zA-Z0-9_]+/g)].map((m) => m[0]);
}
