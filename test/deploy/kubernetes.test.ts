import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { checkManifests, KUBERNETES_DIR, kubectlKustomize, renderBase, schemaErrors, type K8sObject } from './manifests.ts';
import { ALERTS_SOURCE, DASHBOARD_SOURCE, generatedFiles } from './sync.ts';

// deploy/kubernetes without a cluster: every object against its schema, `kubectl kustomize` where
// kubectl is installed, and the invariants that would otherwise break drains, probes, scrapes and
// secrets without a word (manifests.ts). Each invariant is also shown failing on a broken copy.

const base = renderBase(KUBERNETES_DIR);
const kubectl = kubectlKustomize(KUBERNETES_DIR);
const byKind = (objects: K8sObject[], kind: string) => objects.find((o) => o.kind === kind)!;
const names = (objects: K8sObject[]) => objects.map((o) => `${o.kind}/${String(o.metadata.name).replace(/-[a-z0-9]{10}$/, '')}`).sort();

const KEDA_DIR = join(KUBERNETES_DIR, 'optional/keda');
const scaledObject = parse(readFileSync(join(KEDA_DIR, 'scaledobject.yaml'), 'utf8')) as K8sObject;
/** The base with the KEDA component: its ScaledObject in, the HPA out. */
const withKeda = () => [...structuredClone(base).filter((o) => o.kind !== 'HorizontalPodAutoscaler'), structuredClone(scaledObject)];

const temp: string[] = [];
afterAll(() => {
  for (const dir of temp) rmSync(dir, { recursive: true, force: true });
});

describe('the Kubernetes base (deploy/kubernetes)', () => {
  it('holds a Deployment, Service, PodDisruptionBudget, HPA, PodMonitor, PrometheusRule and the two generated ConfigMaps', () => {
    expect(names(base)).toEqual([
      'ConfigMap/voicegw-config',
      'ConfigMap/voicegw-dashboard',
      'Deployment/voicegw',
      'HorizontalPodAutoscaler/voicegw',
      'PodDisruptionBudget/voicegw',
      'PodMonitor/voicegw',
      'PrometheusRule/voicegw',
      'Service/voicegw',
    ]);
  });

  it('has every object valid against its Kubernetes or CRD schema, the optional KEDA ScaledObject too', () => {
    expect([...base, scaledObject].flatMap(schemaErrors)).toEqual([]);
  });

  it('holds every invariant: drain timing, probes and port, the scrape, workers per CPU, secrets, autoscaling', () => {
    expect(checkManifests(base)).toEqual([]);
  });

  it.skipIf(kubectl === undefined)('renders with kubectl kustomize to the same objects, valid, and holding every invariant', () => {
    if (kubectl === undefined || 'error' in kubectl) throw new Error(`kubectl kustomize failed: ${kubectl?.error}`);
    expect(names(kubectl.objects)).toEqual(names(base));
    expect(kubectl.objects.flatMap(schemaErrors)).toEqual([]);
    expect(checkManifests(kubectl.objects)).toEqual([]);
    // The generated config's name carries kustomize's hash (a change rolls the pods), and the Deployment follows it.
    const config = kubectl.objects.find((o) => o.kind === 'ConfigMap' && String(o.metadata.name).startsWith('voicegw-config-'))!;
    expect(byKind(kubectl.objects, 'Deployment').spec.template.spec.containers[0].envFrom).toEqual([{ configMapRef: { name: config.metadata.name } }]);
  });

  it('scales with KEDA instead, through the component optional/keda, holding the same invariants', () => {
    expect(checkManifests(withKeda())).toEqual([]);
    if (kubectl === undefined) return;
    // An overlay of the base with the component, as docs/deployment.md shows it.
    const dir = mkdtempSync(join(tmpdir(), 'voicegw-keda-'));
    temp.push(dir);
    cpSync(KUBERNETES_DIR, join(dir, 'base'), { recursive: true });
    writeFileSync(join(dir, 'kustomization.yaml'), 'resources: [base]\ncomponents: [base/optional/keda]\n');
    const rendered = kubectlKustomize(dir);
    if (rendered === undefined || 'error' in rendered) throw new Error(`kubectl kustomize failed: ${rendered?.error}`);
    expect(names(rendered.objects)).toEqual(names(withKeda()));
    expect(rendered.objects.flatMap(schemaErrors)).toEqual([]);
    expect(checkManifests(rendered.objects)).toEqual([]);
  });

  it("gives Grafana's sidecar exactly dashboards/grafana/voicegw.json, labelled grafana_dashboard: \"1\"", () => {
    for (const objects of [base, ...(kubectl !== undefined && 'objects' in kubectl ? [kubectl.objects] : [])]) {
      const dashboard = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'voicegw-dashboard')!;
      expect(dashboard.metadata.labels).toMatchObject({ grafana_dashboard: '1' });
      expect(dashboard.data['voicegw.json']).toBe(readFileSync(DASHBOARD_SOURCE, 'utf8'));
    }
  });

  it("loads dashboards/prometheus/alerts.yml's groups as its PrometheusRule", () => {
    const { groups } = parse(readFileSync(ALERTS_SOURCE, 'utf8')) as { groups: unknown[] };
    expect(byKind(base, 'PrometheusRule').spec.groups).toEqual(groups);
  });

  it('keeps its copies of dashboards/ as npm run deploy:sync writes them', () => {
    for (const { path, content } of generatedFiles()) {
      expect(readFileSync(path, 'utf8'), `${path} is stale: run npm run deploy:sync`).toBe(content);
    }
  });
});

/** The base with `edit` applied to a copy of its objects. */
function broken(edit: (objects: { objects: K8sObject[]; deployment: K8sObject; container: K8sObject; config: K8sObject; hpa: K8sObject; monitor: K8sObject }) => void): string[] {
  const objects = structuredClone(base);
  const deployment = byKind(objects, 'Deployment');
  edit({
    objects,
    deployment,
    container: deployment.spec.template.spec.containers[0],
    config: objects.find((o) => o.metadata.name === 'voicegw-config')!,
    hpa: byKind(objects, 'HorizontalPodAutoscaler'),
    monitor: byKind(objects, 'PodMonitor'),
  });
  return checkManifests(objects);
}

const setEnv = (container: K8sObject, name: string, value: string) => {
  container.env = [...container.env.filter((e: K8sObject) => e.name !== name), { name, value }];
};

describe('the invariant checks fail on a broken invariant', () => {
  it('rejects an edited copy of the base whose grace period is shorter than preStop + the drain', () => {
    const dir = mkdtempSync(join(tmpdir(), 'voicegw-kustomize-'));
    temp.push(dir);
    cpSync(KUBERNETES_DIR, dir, { recursive: true });
    const file = join(dir, 'deployment.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('terminationGracePeriodSeconds: 50', 'terminationGracePeriodSeconds: 30'));
    const expected = 'terminationGracePeriodSeconds 30 is too short: preStop 10 s + DRAIN_DEADLINE_MS 30 s + 5 s to close and exit = 45 s; the kubelet would SIGKILL replies mid-drain';
    const problems = checkManifests(renderBase(dir));
    console.info(`the checker on ${file}:\n${problems.map((p) => `  ✗ ${p}`).join('\n')}`);
    expect(problems).toEqual([expected]);
    const rendered = kubectlKustomize(dir);
    if (rendered !== undefined && 'objects' in rendered) expect(checkManifests(rendered.objects)).toEqual([expected]);
  });

  it('rejects objects their schemas refuse: a port as a string, an alert rule without an expression', () => {
    const deployment = structuredClone(byKind(base, 'Deployment'));
    deployment.spec.template.spec.containers[0].ports[0].containerPort = '8080';
    expect(schemaErrors(deployment)).toEqual([expect.stringMatching(/containerPort must be integer/)]);
    const rule = structuredClone(byKind(base, 'PrometheusRule'));
    delete rule.spec.groups[0].rules[0].expr;
    expect(schemaErrors(rule)).toEqual([expect.stringMatching(/must have required property expr/)]);
  });

  it("rejects a KEDA threshold at MAX_SESSIONS, and KEDA without its CPU fallback", () => {
    const objects = withKeda();
    const scaled = byKind(objects, 'ScaledObject');
    scaled.spec.triggers[0].metadata.threshold = '300';
    scaled.spec.triggers.pop();
    expect(checkManifests(objects)).toEqual([
      'ScaledObject voicegw aims at 300 sessions a pod, not below MAX_SESSIONS 300: pods would refuse sessions before it scales',
      'ScaledObject voicegw has no CPU trigger to fall back on',
    ]);
  });

  it.each<[string, Parameters<typeof broken>[0], RegExp]>([
    ['DRAIN_DEADLINE_MS raised past the grace period', ({ container }) => setEnv(container, 'DRAIN_DEADLINE_MS', '60000'), /terminationGracePeriodSeconds 50 is too short: preStop 10 s \+ DRAIN_DEADLINE_MS 60 s/],
    ['no preStop wait', ({ container }) => delete container.lifecycle, /no preStop wait/],
    ['a preStop whose wait cannot be read', ({ container }) => (container.lifecycle.preStop = { exec: { command: ['/bin/true'] } }), /cannot tell how long the preStop handler waits/],
    ['a readiness probe on /healthz', ({ container }) => (container.readinessProbe.httpGet.path = '/healthz'), /the readinessProbe asks \/healthz, not the gateway's \/readyz/],
    ['a readiness probe on another port', ({ container }) => (container.readinessProbe.httpGet.port = 9090), /the readinessProbe asks port 9090 \(9090\), but the gateway listens on PORT 8080/],
    ['PORT moved without the container port', ({ container }) => setEnv(container, 'PORT', '9000'), /no container port is 9000/],
    ['HOST set to loopback', ({ config }) => (config.data.HOST = '127.0.0.1'), /HOST is 127\.0\.0\.1/],
    ['WORKERS above the CPU limit', ({ container }) => setEnv(container, 'WORKERS', '4'), /WORKERS 4 > CPU limit 2/],
    ['a CPU limit in millicores below WORKERS', ({ container }) => (container.resources.limits.cpu = '1500m'), /WORKERS 2 > CPU limit 1\.5/],
    ['WORKERS left to default', ({ container }) => (container.env = container.env.filter((e: K8sObject) => e.name !== 'WORKERS')), /WORKERS is not set/],
    ['the PodMonitor scraping another port', ({ monitor }) => (monitor.spec.podMetricsEndpoints[0].port = 'metrics'), /PodMonitor voicegw scrapes metrics\/metrics, not \/metrics on PORT 8080/],
    ['the PodMonitor naming the job after itself', ({ monitor }) => delete monitor.spec.jobLabel, /gives the job <namespace>\/voicegw, but the alert rules select job="voicegw"/],
    ['a client token as a literal value', ({ container }) => setEnv(container, 'CLIENT_TOKENS', 'alice:secret'), /CLIENT_TOKENS is a secret: take it from a Secret/],
    ['DATABASE_URL in the ConfigMap', ({ config }) => (config.data.DATABASE_URL = 'postgres://u:p@db/voicegw'), /ConfigMap voicegw-config holds DATABASE_URL/],
    ['every setting from one Secret, unseen', ({ container }) => container.envFrom.push({ secretRef: { name: 'voicegw' } }), /envFrom secretRef voicegw/],
    ['the HPA aiming at MAX_SESSIONS', ({ hpa }) => (hpa.spec.metrics[0].pods.target.averageValue = '300'), /aims at 300 sessions a pod, not below MAX_SESSIONS 300/],
    ['the HPA without its CPU fallback', ({ hpa }) => hpa.spec.metrics.pop(), /no CPU metric to fall back on/],
    ['a replica count beside the HPA', ({ deployment }) => (deployment.spec.replicas = 2), /sets replicas 2 while an autoscaler owns the count/],
    ['the KEDA ScaledObject beside the HPA', ({ objects }) => objects.push(structuredClone(scaledObject)), /both scale the Deployment: KEDA makes its own HPA/],
    ['DATA_DIR on the read-only root filesystem', ({ container }) => (container.volumeMounts = container.volumeMounts.filter((m: K8sObject) => m.name !== 'data')), /DATA_DIR \/var\/lib\/voicegw is on the read-only root filesystem/],
    ['a setting the gateway refuses', ({ config }) => (config.data.MAX_SESSIONS = '0'), /the gateway would refuse this environment: invalid configuration: MAX_SESSIONS/],
  ])('rejects %s', (_, edit, message) => {
    const problems = broken(edit);
    expect(problems.length).toBeGreaterThan(0);
    expect(problems.some((p) => message.test(p)), problems.join('\n')).toBe(true);
  });
});
