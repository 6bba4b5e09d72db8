import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

// The alert rules are checked by Prometheus's own tool (syntax, then behaviour on synthetic series), and
// here for what promtool does not care about: every alert can be acted on by whoever it pages.

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PROMETHEUS_DIR = `${ROOT}dashboards/prometheus`;
const RULES = `${PROMETHEUS_DIR}/alerts.yml`;
const RULE_TESTS = `${PROMETHEUS_DIR}/alerts.test.yml`;
const CONFIG = `${PROMETHEUS_DIR}/prometheus.yml`;
const RUNBOOK = `${ROOT}docs/operations.md`;
const RUNBOOK_URL = 'https://github.com/voicegw/voicegw/blob/main/docs/operations.md#';
const PROMTOOL = process.env['PROMTOOL'] ?? 'promtool';

interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface RuleTest {
  name: string;
  alert_rule_test?: { eval_time: string; alertname: string; exp_alerts?: { exp_labels?: object; exp_annotations?: object }[] }[];
}

function alertRules(): AlertRule[] {
  const { groups } = parse(readFileSync(RULES, 'utf8')) as { groups: { name: string; rules: AlertRule[] }[] };
  return groups.flatMap((group) => group.rules).filter((rule) => rule.alert !== undefined);
}

function ruleTests(): RuleTest[] {
  return (parse(readFileSync(RULE_TESTS, 'utf8')) as { tests: RuleTest[] }).tests;
}

/** The anchors GitHub gives the headings of a Markdown file. */
function headingAnchors(markdown: string): Set<string> {
  const anchors = new Set<string>();
  for (const [, text] of markdown.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    anchors.add(
      text!
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\s_-]/gu, '')
        .replace(/\s/g, '-'),
    );
  }
  return anchors;
}

/** Runs promtool; a missing promtool fails the test with how to get it, never skips it. */
function promtool(...args: string[]): { status: number | null; output: string } {
  const result = spawnSync(PROMTOOL, args, { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (result.error !== undefined) {
    const missing = (result.error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new Error(
      missing
        ? `promtool not found (tried "${PROMTOOL}"): install Debian's prometheus package (apt-get install prometheus), or set PROMTOOL to its path`
        : `promtool ${args.join(' ')} could not run: ${result.error.message}`,
    );
  }
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

describe('Prometheus configuration and alert rules', () => {
  it('pass promtool check rules', () => {
    const { status, output } = promtool('check', 'rules', RULES);
    expect(status, output).toBe(0);
    expect(output).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('pass promtool check config, which also loads the rule file the scrape configuration names', () => {
    const { status, output } = promtool('check', 'config', CONFIG);
    expect(status, output).toBe(0);
    expect(output).toContain('SUCCESS: 1 rule files found');
  });

  it('pass their promtool unit tests', () => {
    const { status, output } = promtool('test', 'rules', RULE_TESTS);
    expect(status, output).toBe(0);
    expect(output).toContain('SUCCESS');
  });

  it('give every alert a duration, a severity, a summary and a description with its value', () => {
    const alerts = alertRules();
    expect(alerts.length).toBeGreaterThan(0);
    for (const { alert, expr, ...rule } of alerts) {
      expect(rule.for, alert).toMatch(/^\d+[smh]$/);
      expect(['warning', 'critical'], alert).toContain(rule.labels?.['severity']);
      expect(rule.annotations?.['summary'], alert).toBeTruthy();
      expect(rule.annotations?.['description'], alert).toContain('$value');
      // absent() has no instance to name: it fires precisely when there is none.
      if (!expr.trim().startsWith('absent(')) expect(rule.annotations?.['description'], alert).toContain('$labels.instance');
    }
  });

  it("link every alert to a heading of its own in docs/operations.md", () => {
    const anchors = headingAnchors(readFileSync(RUNBOOK, 'utf8'));
    for (const { alert, annotations } of alertRules()) {
      expect(annotations?.['runbook_url'], alert).toBe(`${RUNBOOK_URL}${alert.toLowerCase()}`);
      expect(anchors.has(alert.toLowerCase()), `docs/operations.md has no heading "${alert}"`).toBe(true);
    }
  });

  it('have a promtool test in which each alert fires, with labels and annotations, and one in which it stays silent', () => {
    const checks = ruleTests().flatMap((test) => test.alert_rule_test ?? []);
    const names = new Set(alertRules().map(({ alert }) => alert));
    for (const alert of names) {
      const mine = checks.filter((check) => check.alertname === alert);
      const firing = mine.filter((check) => (check.exp_alerts ?? []).length > 0);
      expect(firing.length, `${alert} never fires in alerts.test.yml`).toBeGreaterThan(0);
      for (const check of firing) {
        for (const expected of check.exp_alerts!) {
          expect(expected.exp_labels, `${alert} at ${check.eval_time}: exp_labels`).toBeDefined();
          expect(expected.exp_annotations, `${alert} at ${check.eval_time}: exp_annotations`).toBeDefined();
        }
      }
      expect(mine.some((check) => (check.exp_alerts ?? []).length === 0), `${alert} is never shown silent in alerts.test.yml`).toBe(true);
    }
    for (const check of checks) expect(names, `alerts.test.yml tests an unknown alert`).toContain(check.alertname);
  });
});
