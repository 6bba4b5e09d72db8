// The deployment files as data, and the checks that keep them in agreement with the gateway: the
// Kubernetes manifests (deploy/kubernetes, rendered as kustomize would), the Dockerfile and the systemd
// unit. Every check answers with sentences naming what is broken (an empty list: all hold), so that a
// test can show one failing, and `npm run deploy:check` (test/deploy/check.ts) can run them on an overlay.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
// One module per kind: the packages' indexes load every model there is (seconds).
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Service } from 'kubernetes-models/v1/Service';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject';
import { ConfigError, loadConfig, type Config } from '../../src/config.ts';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const KUBERNETES_DIR = join(ROOT, 'deploy/kubernetes');
export const DOCKERFILE = join(ROOT, 'deploy/Dockerfile');
export const DOCKERIGNORE = join(ROOT, 'deploy/Dockerfile.dockerignore');
export const SYSTEMD_UNIT = join(ROOT, 'deploy/systemd/voicegw.service');
export const SYSTEMD_ENV = join(ROOT, 'deploy/systemd/voicegw.env.example');

/** Settings that are secrets: only ever from a Secret (secretKeyRef), never a literal in a manifest, image or unit. */
export const SECRET_SETTINGS = ['UPSTREAM_TOKEN', 'CLIENT_TOKENS', 'CLIENT_JWT_SECRET', 'DATABASE_URL', 'SIM_AUTH_KEY'] as const;
/** Seconds beyond preStop + DRAIN_DEADLINE_MS that the last closes and the exit may take. */
export const EXIT_MARGIN_S = 5;

export type K8sObject = Record<string, any>;

// ---------------------------------------------------------------------------------------------------
// Rendering

/**
 * A kustomize base as `kubectl kustomize` renders it, for what deploy/kubernetes uses: resources (files),
 * images, configMapGenerator (envs, files, literals, labels). Generated names keep no hash suffix (kubectl
 * adds one and rewrites the references alike, so resolving by name works on either).
 */
export function renderBase(dir: string): K8sObject[] {
  const kustomization = parseYaml(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as K8sObject;
  const inside = (path: string) => {
    const full = resolve(dir, path);
    if (relative(dir, full).startsWith('..')) throw new Error(`${path}: kustomize reads no file outside ${dir}`);
    return full;
  };
  const objects: K8sObject[] = [];
  for (const file of (kustomization.resources ?? []) as string[]) {
    for (const doc of parseAllDocuments(readFileSync(inside(file), 'utf8'))) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]!.message}`);
      const object = doc.toJS() as K8sObject | null;
      if (object !== null) objects.push(object);
    }
  }
  for (const generator of (kustomization.configMapGenerator ?? []) as K8sObject[]) {
    const data: Record<string, string> = {};
    for (const file of (generator.envs ?? []) as string[]) Object.assign(data, parseEnvFile(readFileSync(inside(file), 'utf8')));
    for (const entry of (generator.files ?? []) as string[]) {
      const [key, path] = entry.includes('=') ? (entry.split('=', 2) as [string, string]) : [posix.basename(entry), entry];
      data[key] = readFileSync(inside(path), 'utf8');
    }
    for (const entry of (generator.literals ?? []) as string[]) {
      const at = entry.indexOf('=');
      data[entry.slice(0, at)] = entry.slice(at + 1);
    }
    objects.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: generator.name, labels: generator.options?.labels }, data });
  }
  for (const image of (kustomization.images ?? []) as K8sObject[]) {
    for (const container of objects.flatMap((o) => podSpec(o)?.containers ?? [])) {
      const [name, tag] = splitImage(container.image as string);
      if (name !== image.name) continue;
      container.image = `${image.newName ?? name}${image.digest !== undefined ? `@${image.digest}` : `:${image.newTag ?? tag ?? 'latest'}`}`;
    }
  }
  return objects;
}

/** `kubectl kustomize DIR`, parsed; undefined where kubectl is not installed. */
export function kubectlKustomize(dir: string): { objects: K8sObject[] } | { error: string } | undefined {
  const result = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 });
  if (result.error !== undefined && (result.error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  if (result.status !== 0) return { error: `${result.stderr}${result.error?.message ?? ''}` };
  return { objects: parseAllDocuments(result.stdout).map((d) => d.toJS() as K8sObject) };
}

/** A kustomize `envs` file: VARIABLE=value lines; # comments and blank lines ignored. */
export function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const at = line.indexOf('=');
    if (at <= 0) throw new Error(`not VARIABLE=value: ${line}`);
    env[line.slice(0, at)] = line.slice(at + 1);
  }
  return env;
}

function splitImage(image: string): [string, string | undefined] {
  const at = image.lastIndexOf(':');
  return at > image.lastIndexOf('/') ? [image.slice(0, at), image.slice(at + 1)] : [image, undefined];
}

// ---------------------------------------------------------------------------------------------------
// Schemas

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1 Deployment': Deployment,
  'v1 Service': Service,
  'v1 ConfigMap': ConfigMap,
  'policy/v1 PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2 HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1 PodMonitor': PodMonitor,
  'monitoring.coreos.com/v1 ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1 PrometheusRule': PrometheusRule,
  'keda.sh/v1alpha1 ScaledObject': ScaledObject,
};

/**
 * The object against its Kubernetes (or CRD) schema from kubernetes-models: types, required fields,
 * enums, formats. Like the API server's OpenAPI schema it does not reject unknown fields; the
 * invariants below read every field they need, so a misspelt one shows as missing there.
 */
export function schemaErrors(object: K8sObject): string[] {
  const Model = MODELS[`${object.apiVersion} ${object.kind}`];
  if (Model === undefined) return [`${object.apiVersion} ${object.kind} ${object.metadata?.name}: no schema known here (add it to MODELS)`];
  try {
    new Model(object as never).validate();
    return [];
  } catch (error) {
    return [`${object.kind} ${object.metadata?.name}: ${(error as Error).message}`];
  }
}

// ---------------------------------------------------------------------------------------------------
// Invariants of the Kubernetes manifests

const find = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind);
const podSpec = (o: K8sObject): K8sObject | undefined => (o.kind === 'Deployment' ? o.spec?.template?.spec : undefined);
const matches = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

/** A CPU quantity ("2", "1500m", "0.5") in cores. */
export function cores(quantity: string | number | undefined): number | undefined {
  if (quantity === undefined) return undefined;
  const text = String(quantity);
  return text.endsWith('m') ? Number(text.slice(0, -1)) / 1000 : Number(text);
}

/** How long a preStop handler waits, in seconds: `sleep N`, the sleep handler, or node's setTimeout. */
export function preStopSeconds(preStop: K8sObject | undefined): number | undefined {
  if (preStop === undefined) return 0;
  if (preStop.sleep?.seconds !== undefined) return Number(preStop.sleep.seconds);
  const command = (preStop.exec?.command ?? []) as string[];
  const line = command.join(' ');
  const sleep = /(?:^|[\s/;&])sleep\s+(\d+(?:\.\d+)?)s?(?:\s|$|;|&)/.exec(line);
  if (sleep) return Number(sleep[1]);
  const timeout = /setTimeout\([^,]*,\s*(\d+)\s*\)/.exec(line);
  if (timeout) return Number(timeout[1]) / 1000;
  return undefined;
}

/** The container's environment as the gateway sees it, where the manifests say it: envFrom, then env. */
function containerEnv(objects: K8sObject[], container: K8sObject, problems: string[]) {
  const env: Record<string, string> = {};
  const fromSecrets = new Set<string>();
  for (const source of (container.envFrom ?? []) as K8sObject[]) {
    if (source.secretRef !== undefined) {
      problems.push(`envFrom secretRef ${source.secretRef.name}: takes every key of a Secret as a setting unseen; name each secret with env[].valueFrom.secretKeyRef`);
      continue;
    }
    const name = source.configMapRef?.name as string | undefined;
    const configMap = find(objects, 'ConfigMap').find((c) => c.metadata?.name === name);
    if (configMap === undefined) {
      if (source.configMapRef?.optional !== true) problems.push(`envFrom configMapRef ${name}: no such ConfigMap in the manifests`);
      continue;
    }
    for (const [key, value] of Object.entries((configMap.data ?? {}) as Record<string, string>)) env[`${source.prefix ?? ''}${key}`] = value;
  }
  for (const variable of (container.env ?? []) as K8sObject[]) {
    if (variable.value !== undefined) env[variable.name] = String(variable.value);
    else if (variable.valueFrom?.secretKeyRef !== undefined) {
      delete env[variable.name];
      fromSecrets.add(variable.name);
    } else if (variable.valueFrom?.configMapKeyRef !== undefined) {
      const ref = variable.valueFrom.configMapKeyRef;
      const value = find(objects, 'ConfigMap').find((c) => c.metadata?.name === ref.name)?.data?.[ref.key];
      if (value !== undefined) env[variable.name] = value;
    } else delete env[variable.name];
  }
  return { env, fromSecrets };
}

function portOf(container: K8sObject, port: string | number | undefined): number | undefined {
  if (typeof port === 'number') return port;
  if (port !== undefined && /^\d+$/.test(port)) return Number(port);
  return ((container.ports ?? []) as K8sObject[]).find((p) => p.name === port)?.containerPort as number | undefined;
}

export interface Gateway {
  deployment: K8sObject;
  container: K8sObject;
  config: Config | undefined;
  env: Record<string, string>;
}

/**
 * Everything that breaks a drain, a probe, a scrape or a secret silently, as sentences; empty when all
 * hold. `objects` is a rendered kustomization (renderBase or kubectlKustomize).
 */
export function checkManifests(objects: K8sObject[]): string[] {
  const problems: string[] = [];
  const deployments = find(objects, 'Deployment');
  if (deployments.length !== 1) return [`expected one Deployment, found ${deployments.length}`];
  const deployment = deployments[0]!;
  const pod = podSpec(deployment) ?? {};
  const podLabels = deployment.spec?.template?.metadata?.labels as Record<string, string> | undefined;
  const container = ((pod.containers ?? []) as K8sObject[]).find((c) => c.name === 'voicegw') ?? (pod.containers?.[0] as K8sObject | undefined);
  if (container === undefined) return ['the Deployment has no container'];
  if (!matches(deployment.spec?.selector?.matchLabels, podLabels)) problems.push("the Deployment's selector does not match its pod template's labels");
  if (deployment.spec?.replicas !== undefined && (find(objects, 'HorizontalPodAutoscaler').length > 0 || find(objects, 'ScaledObject').length > 0)) {
    problems.push(`the Deployment sets replicas ${deployment.spec.replicas} while an autoscaler owns the count: every apply would fight it, a forced one would reset the fleet`);
  }

  // The configuration the gateway would load from this environment (src/config.ts, its defaults included).
  const { env, fromSecrets } = containerEnv(objects, container, problems);
  let config: Config | undefined;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    problems.push(`the gateway would refuse this environment: ${error.message.replace(/\n\s*/g, ' ')}`);
  }

  // Secrets: only from a Secret, named one by one.
  for (const c of [...((pod.containers ?? []) as K8sObject[]), ...((pod.initContainers ?? []) as K8sObject[])]) {
    for (const variable of (c.env ?? []) as K8sObject[]) {
      if (!(SECRET_SETTINGS as readonly string[]).includes(variable.name)) continue;
      if (variable.valueFrom?.secretKeyRef === undefined) problems.push(`${variable.name} is a secret: take it from a Secret (valueFrom.secretKeyRef), not ${variable.value !== undefined ? 'a literal value' : 'a ConfigMap'}`);
    }
  }
  for (const configMap of find(objects, 'ConfigMap')) {
    for (const key of Object.keys(configMap.data ?? {})) {
      if ((SECRET_SETTINGS as readonly string[]).includes(key)) problems.push(`ConfigMap ${configMap.metadata?.name} holds ${key}, a secret: take it from a Secret (secretKeyRef)`);
    }
  }
  for (const secret of find(objects, 'Secret')) problems.push(`Secret ${secret.metadata?.name} is in the manifests: secrets are created by the operator, never committed`);

  if (config !== undefined) {
    const { port, host } = config;
    // Probes and the port.
    if (host !== '0.0.0.0' && host !== '::') problems.push(`HOST is ${host}: the kubelet's probes and the Service reach the pod's IP, so listen on 0.0.0.0`);
    const declared = ((container.ports ?? []) as K8sObject[]).find((p) => p.containerPort === port);
    if (declared === undefined) problems.push(`no container port is ${port}, the PORT the gateway listens on`);
    const probe = (name: 'readinessProbe' | 'livenessProbe' | 'startupProbe', path: string, required: boolean) => {
      const p = container[name] as K8sObject | undefined;
      if (p === undefined) {
        if (required) problems.push(`no ${name}: it must ask ${path} on port ${port}`);
        return;
      }
      if (p.httpGet === undefined) return problems.push(`the ${name} is not an httpGet of ${path}`);
      if (p.httpGet.path !== path) problems.push(`the ${name} asks ${p.httpGet.path}, not the gateway's ${path}`);
      const probed = portOf(container, p.httpGet.port);
      if (probed !== port) problems.push(`the ${name} asks port ${p.httpGet.port} (${probed ?? 'no such port'}), but the gateway listens on PORT ${port}`);
      if ((p.httpGet.scheme ?? 'HTTP') !== 'HTTP') problems.push(`the ${name} uses ${p.httpGet.scheme}; the gateway serves plain HTTP`);
    };
    probe('readinessProbe', '/readyz', true);
    probe('livenessProbe', '/healthz', true);
    probe('startupProbe', '/healthz', false);

    // The drain: preStop, then SIGTERM, then up to DRAIN_DEADLINE_MS, all within the grace period.
    const grace = (pod.terminationGracePeriodSeconds as number | undefined) ?? 30;
    const preStop = preStopSeconds(container.lifecycle?.preStop);
    const drain = Math.ceil(config.limits.drainDeadlineMs / 1000);
    if (preStop === undefined) problems.push('cannot tell how long the preStop handler waits (use sleep N, the sleep handler, or setTimeout)');
    else {
      if (preStop < 1) problems.push('no preStop wait: endpoints may still send new sessions to the pod after SIGTERM has begun its drain');
      if (grace < preStop + drain + EXIT_MARGIN_S) {
        problems.push(
          `terminationGracePeriodSeconds ${grace} is too short: preStop ${preStop} s + DRAIN_DEADLINE_MS ${drain} s + ${EXIT_MARGIN_S} s to close and exit = ${preStop + drain + EXIT_MARGIN_S} s; the kubelet would SIGKILL replies mid-drain`,
        );
      }
    }

    // One event loop per core the pod may use.
    const cpuLimit = cores(container.resources?.limits?.cpu);
    if (env.WORKERS === undefined) problems.push("WORKERS is not set: it would default to the node's cores, not the pod's CPU limit");
    if (cpuLimit === undefined) problems.push('no CPU limit: WORKERS cannot be matched to it');
    else if (config.workers > cpuLimit) problems.push(`WORKERS ${config.workers} > CPU limit ${cpuLimit}: the event loops would be throttled together`);
    if (container.resources?.requests?.memory === undefined || container.resources?.limits?.memory === undefined) problems.push('memory request and limit must both be set (sized from the capacity bench)');

    // Where the SQLite store writes, with a read-only root filesystem.
    const mounts = ((container.volumeMounts ?? []) as K8sObject[]).map((m) => m.mountPath as string);
    const dataDir = posix.resolve('/app', config.store.dataDir);
    if (container.securityContext?.readOnlyRootFilesystem === true && !mounts.some((m) => dataDir === m || dataDir.startsWith(`${m}/`))) {
      problems.push(`DATA_DIR ${dataDir} is on the read-only root filesystem: mount a volume there`);
    }
    if (container.securityContext?.runAsNonRoot !== true && pod.securityContext?.runAsNonRoot !== true) problems.push('runAsNonRoot is not set');

    // The Service.
    for (const service of find(objects, 'Service')) {
      if (!matches(service.spec?.selector, podLabels)) problems.push(`Service ${service.metadata?.name} selects no voicegw pod`);
      for (const p of (service.spec?.ports ?? []) as K8sObject[]) {
        if (portOf(container, p.targetPort ?? p.port) !== port) problems.push(`Service ${service.metadata?.name} port ${p.port} targets ${p.targetPort}, not PORT ${port}`);
      }
    }

    // The scrape: the PodMonitor reaches /metrics on PORT, with the job the alert rules select.
    const alertJobs = new Set(find(objects, 'PrometheusRule').flatMap((r) => [...JSON.stringify(r.spec ?? {}).matchAll(/job=\\"([^\\"]+)\\"/g)].map((m) => m[1]!)));
    for (const monitor of find(objects, 'PodMonitor')) {
      const name = `PodMonitor ${monitor.metadata?.name}`;
      if (!matches(monitor.spec?.selector?.matchLabels, podLabels)) problems.push(`${name} selects no voicegw pod`);
      const endpoints = (monitor.spec?.podMetricsEndpoints ?? []) as K8sObject[];
      if (!endpoints.some((e) => portOf(container, e.port ?? e.targetPort) === port && (e.path ?? '/metrics') === '/metrics')) {
        problems.push(`${name} scrapes ${endpoints.map((e) => `${e.port ?? e.targetPort}${e.path ?? '/metrics'}`).join(', ') || 'nothing'}, not /metrics on PORT ${port}`);
      }
      const job = monitor.spec?.jobLabel !== undefined ? podLabels?.[monitor.spec.jobLabel as string] : `${monitor.metadata?.namespace ?? '<namespace>'}/${monitor.metadata?.name}`;
      for (const wanted of alertJobs) if (job !== wanted) problems.push(`${name} gives the job ${job}, but the alert rules select job="${wanted}"`);
    }
    if (find(objects, 'PodMonitor').length === 0 && find(objects, 'ServiceMonitor').length === 0) problems.push('nothing scrapes /metrics (no PodMonitor)');

    // Autoscaling on sessions per pod, CPU as the fallback.
    for (const hpa of find(objects, 'HorizontalPodAutoscaler')) {
      const name = `HorizontalPodAutoscaler ${hpa.metadata?.name}`;
      const target = hpa.spec?.scaleTargetRef;
      if (target?.kind !== 'Deployment' || target?.name !== deployment.metadata?.name) problems.push(`${name} scales ${target?.kind} ${target?.name}, not the Deployment`);
      const metrics = (hpa.spec?.metrics ?? []) as K8sObject[];
      const sessions = metrics.find((m) => m.type === 'Pods' && m.pods?.metric?.name === 'voicegw_sessions_active');
      if (sessions === undefined) problems.push(`${name} does not scale on voicegw_sessions_active per pod`);
      else {
        const perPod = Number(sessions.pods.target?.averageValue);
        if (!(perPod < config.limits.maxSessions)) problems.push(`${name} aims at ${sessions.pods.target?.averageValue} sessions a pod, not below MAX_SESSIONS ${config.limits.maxSessions}: pods would refuse sessions before it scales`);
      }
      if (!metrics.some((m) => m.type === 'Resource' && m.resource?.name === 'cpu')) problems.push(`${name} has no CPU metric to fall back on`);
    }
    // Or KEDA's (optional/keda), which makes the HPA itself.
    for (const scaled of find(objects, 'ScaledObject')) {
      const name = `ScaledObject ${scaled.metadata?.name}`;
      if (find(objects, 'HorizontalPodAutoscaler').length > 0) problems.push(`${name} and a HorizontalPodAutoscaler both scale the Deployment: KEDA makes its own HPA, delete hpa.yaml`);
      const target = scaled.spec?.scaleTargetRef;
      if ((target?.kind ?? 'Deployment') !== 'Deployment' || target?.name !== deployment.metadata?.name) problems.push(`${name} scales ${target?.kind} ${target?.name}, not the Deployment`);
      const triggers = (scaled.spec?.triggers ?? []) as K8sObject[];
      const sessions = triggers.find((t) => t.type === 'prometheus' && /voicegw_sessions_active/.test(t.metadata?.query ?? ''));
      if (sessions === undefined) problems.push(`${name} does not scale on voicegw_sessions_active`);
      else if (!(Number(sessions.metadata.threshold) < config.limits.maxSessions)) problems.push(`${name} aims at ${sessions.metadata.threshold} sessions a pod, not below MAX_SESSIONS ${config.limits.maxSessions}: pods would refuse sessions before it scales`);
      if (!triggers.some((t) => t.type === 'cpu')) problems.push(`${name} has no CPU trigger to fall back on`);
    }
  }

  for (const pdb of find(objects, 'PodDisruptionBudget')) {
    if (!matches(pdb.spec?.selector?.matchLabels, podLabels)) problems.push(`PodDisruptionBudget ${pdb.metadata?.name} selects no voicegw pod`);
    if (pdb.spec?.minAvailable !== undefined && String(pdb.spec.minAvailable) !== '0' && find(objects, 'HorizontalPodAutoscaler').some((h) => Number(h.spec?.minReplicas ?? 1) <= Number(pdb.spec.minAvailable))) {
      problems.push(`PodDisruptionBudget ${pdb.metadata?.name}: minAvailable ${pdb.spec.minAvailable} leaves no pod to evict at the HPA's minimum: node drains would stall`);
    }
  }
  if (fromSecrets.size === 0 && config !== undefined) problems.push('no setting is taken from a Secret: the upstream token and client tokens have nowhere to come from');
  return problems;
}

// ---------------------------------------------------------------------------------------------------
// The Dockerfile

export interface Instruction {
  keyword: string;
  args: string;
  line: number;
  /** hadolint rules a `# hadolint ignore=` comment just above it names. */
  ignored: string[];
}

/** Instructions with their continuation lines joined, comments dropped (parser directives too). */
export function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  const lines = text.split('\n');
  let ignored: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!;
    const trimmed = line.trim();
    if (trimmed === '') continue;
    if (trimmed.startsWith('#')) {
      const ignore = /^#\s*hadolint\s+ignore=([\w,]+)/.exec(trimmed);
      if (ignore) ignored = ignore[1]!.split(',');
      continue;
    }
    while (line.trimEnd().endsWith('\\') && i + 1 < lines.length) {
      line = `${line.trimEnd().slice(0, -1)} ${lines[++i]!.trim().startsWith('#') ? '' : lines[i]!.trim()}`;
    }
    const [, keyword, args] = /^\s*(\w+)\s*(.*)$/s.exec(line)!;
    instructions.push({ keyword: keyword!.toUpperCase(), args: args!.trim(), line: start + 1, ignored });
    ignored = [];
  }
  return instructions;
}

function jsonArray(args: string): string[] | undefined {
  try {
    const value = JSON.parse(args) as unknown;
    return Array.isArray(value) && value.every((v) => typeof v === 'string') ? (value as string[]) : undefined;
  } catch {
    return undefined;
  }
}

/** The files the compiled gateway reads relative to its own modules (`new URL('../../x', import.meta.url)`), from the repository root. */
export function runtimeFiles(): string[] {
  const found = new Set<string>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        if (relative(join(ROOT, 'src'), path) !== 'cli') walk(path);
      } else if (entry.name.endsWith('.ts')) {
        for (const m of readFileSync(path, 'utf8').matchAll(/new URL\('(\.\.\/[^']+)', import\.meta\.url\)/g)) {
          found.add(relative(ROOT, resolve(dirname(path), m[1]!)).replace(/\\/g, '/') + (m[1]!.endsWith('/') ? '/' : ''));
        }
      }
    }
  };
  walk(join(ROOT, 'src'));
  return [...found].sort();
}

/**
 * hadolint's rules that apply here, and what the gateway needs of its image: the process, the user, the
 * health check, the port, and every file the compiled code reads where it looks for it.
 */
export function checkDockerfile(text: string, dockerignore: string | undefined, needed: string[] = runtimeFiles()): string[] {
  const problems: string[] = [];
  const all = parseDockerfile(text);
  const stages: { name: string | undefined; instructions: Instruction[] }[] = [];
  for (const instruction of all) {
    if (instruction.keyword === 'FROM') {
      const [, image, name] = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args) ?? [];
      // DL3006, DL3007: an explicit tag or digest, never latest.
      const known = stages.some((s) => s.name === image);
      if (!known && !/[:@]/.test(image?.split('/').pop() ?? '')) problems.push(`line ${instruction.line}: FROM ${image} has no tag (DL3006)`);
      if (/:latest$/.test(image ?? '')) problems.push(`line ${instruction.line}: FROM ${image} uses latest (DL3007)`);
      stages.push({ name, instructions: [] });
    } else if (stages.length === 0) {
      if (instruction.keyword !== 'ARG') problems.push(`line ${instruction.line}: ${instruction.keyword} before the first FROM (DL3061)`);
    } else stages.at(-1)!.instructions.push(instruction);
  }
  if (stages.length < 2) problems.push('not multi-stage: the runtime image would carry the compilers and dev dependencies');
  const stageNames = new Set<string>();
  for (const stage of stages) {
    for (const i of stage.instructions) {
      const rule = (id: string, message: string) => {
        if (!i.ignored.includes(id)) problems.push(`line ${i.line}: ${message} (${id})`);
      };
      if (i.keyword === 'WORKDIR' && !i.args.startsWith('/')) rule('DL3000', `WORKDIR ${i.args} is not absolute`);
      if (i.keyword === 'ADD') rule('DL3020', 'ADD: use COPY for files and folders');
      if (i.keyword === 'MAINTAINER') rule('DL4000', 'MAINTAINER is deprecated');
      if ((i.keyword === 'CMD' || i.keyword === 'ENTRYPOINT') && jsonArray(i.args) === undefined) rule('DL3025', `${i.keyword} in shell form: use the JSON form, so that signals reach the process`);
      if (i.keyword === 'COPY') {
        const from = /--from=(\S+)/.exec(i.args)?.[1];
        if (from !== undefined && !stageNames.has(from)) rule('DL3022', `COPY --from=${from} names no earlier stage`);
      }
      if (i.keyword === 'RUN') {
        const run = i.args;
        if (/\bsudo\b/.test(run)) rule('DL3004', 'sudo in RUN');
        if (/(^|&&|;)\s*cd\s/.test(run)) rule('DL3003', 'cd in RUN: use WORKDIR');
        if (/apt-get\s+(-\S+\s+)*install/.test(run)) {
          if (!/--no-install-recommends/.test(run)) rule('DL3015', 'apt-get install without --no-install-recommends');
          if (!/\s-y\b|--yes|--assume-yes/.test(run)) rule('DL3014', 'apt-get install without -y');
          if (!/rm -rf \/var\/lib\/apt\/lists/.test(run)) rule('DL3009', 'apt lists left in the layer: rm -rf /var/lib/apt/lists/*');
          if (!/apt-get update/.test(run)) rule('DL3009', 'apt-get install without apt-get update in the same RUN');
          if (/apt-get\s+(-\S+\s+)*install(\s+-\S+)*(\s+[a-z0-9.+-]+)+/.test(run) && !/=/.test(run.split('install')[1] ?? '')) rule('DL3008', 'apt packages without pinned versions');
        }
        if (/\bapt\s+(install|update)/.test(run)) rule('DL3027', 'apt: use apt-get');
        if (/\bnpm\s+(i|install)\b(?!-)/.test(run)) rule('DL3016', 'npm install: use npm ci, from the lock file');
        if (/\|/.test(run.replace(/\|\|/g, '')) && !stage.instructions.some((s) => s.keyword === 'SHELL' && /pipefail/.test(s.args))) rule('DL4006', 'a pipe in RUN without SHELL ["/bin/bash", "-o", "pipefail", "-c"]');
      }
      if ((i.keyword === 'ENV' || i.keyword === 'ARG') && SECRET_SETTINGS.some((s) => new RegExp(`(^|\\s)${s}(=|\\s|$)`).test(i.args))) {
        problems.push(`line ${i.line}: ${i.keyword} names a secret setting: secrets are given at run time, never built into the image`);
      }
    }
    if (stage.name !== undefined) stageNames.add(stage.name);
  }

  // The runtime stage: the last one.
  const runtime = stages.at(-1)?.instructions ?? [];
  const last = (keyword: string) => runtime.filter((i) => i.keyword === keyword).at(-1);
  const user = last('USER')?.args;
  if (user === undefined) problems.push('the runtime stage sets no USER: the gateway would run as root (DL3002)');
  else {
    const name = user.split(':')[0]!;
    if (name === 'root' || name === '0') problems.push(`the runtime stage runs as ${user} (DL3002)`);
    else if (!/^\d+$/.test(name)) problems.push(`USER ${user} is not numeric: Kubernetes' runAsNonRoot cannot verify a user name`);
  }
  const cmd = last('CMD');
  const entrypoint = last('ENTRYPOINT');
  const command = [...(entrypoint !== undefined ? (jsonArray(entrypoint.args) ?? ['<shell>']) : ['<the base image entrypoint>']), ...(jsonArray(cmd?.args ?? '') ?? [])];
  if (command.join(' ') !== 'node dist/main.js') problems.push(`the container runs \`${command.join(' ')}\`, not \`node dist/main.js\` as its only process (ENTRYPOINT [] and CMD ["node", "dist/main.js"])`);
  const health = last('HEALTHCHECK');
  if (health === undefined || !/\/healthz/.test(health.args)) problems.push('no HEALTHCHECK asking /healthz (DL3057)');
  else if (/\bcurl\b|\bwget\b/.test(health.args)) problems.push('the HEALTHCHECK uses curl or wget, which the slim base image lacks: ask with node');
  const stopSignal = last('STOPSIGNAL')?.args ?? 'SIGTERM';
  if (stopSignal !== 'SIGTERM') problems.push(`STOPSIGNAL ${stopSignal}: the gateway drains on SIGTERM`);
  const envPort = runtime
    .filter((i) => i.keyword === 'ENV')
    .map((i) => /(?:^|\s)PORT=(\d+)/.exec(i.args)?.[1])
    .filter((p) => p !== undefined)
    .at(-1);
  const port = envPort ?? String(loadConfig({}).port);
  if (!runtime.some((i) => i.keyword === 'EXPOSE' && i.args.split(/\s+/).some((p) => p.split('/')[0] === port))) problems.push(`EXPOSE does not name ${port}, the port the gateway listens on`);

  // Every file the compiled code reads is where dist/<dir>/../../ finds it.
  let workdir = '/';
  const copied: string[] = [];
  for (const i of runtime) {
    if (i.keyword === 'WORKDIR') workdir = posix.resolve(workdir, i.args);
    if (i.keyword !== 'COPY') continue;
    const parts = (jsonArray(i.args) ?? i.args.split(/\s+/)).filter((p) => !p.startsWith('--'));
    copied.push(posix.resolve(workdir, parts.at(-1)!));
  }
  const covered = (path: string) => {
    const full = posix.resolve(workdir, path);
    return copied.some((c) => full === c || full.startsWith(`${c}/`) || `${full}/` === `${c}/`);
  };
  for (const path of ['dist/main.js', 'node_modules/', 'package.json', ...needed]) {
    if (!covered(path)) problems.push(`the runtime stage has no ${path} in ${workdir}: the compiled gateway reads it from there`);
  }

  // The build context lets in what the COPYs take from it.
  if (dockerignore !== undefined) {
    const rules = dockerignore
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    const allowed = (path: string) => {
      let included = true;
      for (const rule of rules) {
        const negate = rule.startsWith('!');
        const pattern = (negate ? rule.slice(1) : rule).replace(/\/$/, '');
        const hit = pattern === '*' || pattern === '**' || path === pattern || path.startsWith(`${pattern}/`);
        if (hit) included = negate;
      }
      return included;
    };
    for (const stage of stages) {
      for (const i of stage.instructions) {
        if (i.keyword !== 'COPY' || /--from=/.test(i.args)) continue;
        const parts = (jsonArray(i.args) ?? i.args.split(/\s+/)).filter((p) => !p.startsWith('--'));
        for (const source of parts.slice(0, -1)) if (!allowed(source.replace(/^\.\//, '').replace(/\/$/, ''))) problems.push(`line ${i.line}: COPY ${source}, which Dockerfile.dockerignore leaves out of the build context`);
      }
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------
// The systemd unit

/** A unit file's sections: each key's values in order (keys may repeat). */
export function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const sections: Record<string, Record<string, string[]>> = {};
  let section: Record<string, string[]> | undefined;
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = pending + raw.trim();
    pending = '';
    if (line.endsWith('\\')) {
      pending = `${line.slice(0, -1)} `;
      continue;
    }
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = sections[header[1]!] ??= {};
      continue;
    }
    const at = line.indexOf('=');
    if (section === undefined || at < 0) throw new Error(`not a unit line: ${line}`);
    (section[line.slice(0, at).trim()] ??= []).push(line.slice(at + 1).trim());
  }
  return sections;
}

/** systemd's time spans as seconds: "45", "45s", "1min 30s", "2min". */
export function timeSpanSeconds(span: string): number {
  let total = 0;
  for (const [, n, unit] of span.matchAll(/(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h)?/g)) {
    const factor = { ms: 0.001, s: 1, sec: 1, m: 60, min: 60, h: 3600 }[unit ?? 's'] ?? 1;
    total += Number(n) * factor;
  }
  return total;
}

/** The unit drains as the gateway does: SIGTERM to node alone, a stop timeout past the drain, no secret in it. */
export function checkUnit(unitText: string, envFileText: string | undefined): string[] {
  const problems: string[] = [];
  const unit = parseUnit(unitText);
  const service = unit.Service ?? {};
  const one = (key: string) => service[key]?.at(-1);
  const env: Record<string, string> = {};
  for (const line of service.Environment ?? []) {
    for (const [, key, value] of line.matchAll(/"?([A-Z_][A-Z0-9_]*)=([^"\s]*)"?/g)) env[key!] = value!;
  }
  // EnvironmentFile= overrides Environment=.
  if (envFileText !== undefined) Object.assign(env, parseEnvFile(envFileText));
  for (const key of SECRET_SETTINGS) if ((service.Environment ?? []).some((l) => l.includes(`${key}=`))) problems.push(`${key} is in the unit: keep secrets in the EnvironmentFile (mode 0640)`);
  if ((service.EnvironmentFile ?? []).length === 0) problems.push('no EnvironmentFile: settings and secrets have nowhere to live');

  let config: Config | undefined;
  try {
    config = loadConfig({ WORKERS: '1', ...env });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    problems.push(`the gateway would refuse this environment: ${error.message.replace(/\n\s*/g, ' ')}`);
  }
  const exec = one('ExecStart') ?? '';
  if (!/^\S*\/node\s+dist\/main\.js$/.test(exec)) problems.push(`ExecStart is \`${exec}\`, not \`/path/to/node dist/main.js\` (the process itself, not npm, which does not pass SIGTERM on)`);
  if (one('WorkingDirectory') === undefined) problems.push('no WorkingDirectory: dist/main.js is relative to the checkout');
  if ((one('KillSignal') ?? 'SIGTERM') !== 'SIGTERM') problems.push(`KillSignal ${one('KillSignal')}: the gateway drains on SIGTERM`);
  if (one('KillMode') !== 'mixed') problems.push(`KillMode ${one('KillMode') ?? 'control-group'}: use mixed, so that SIGTERM goes to node alone and SIGKILL to what is left after TimeoutStopSec`);
  const stop = one('TimeoutStopSec') ?? one('TimeoutSec');
  if (config !== undefined) {
    const drain = Math.ceil(config.limits.drainDeadlineMs / 1000);
    if (stop === undefined || timeSpanSeconds(stop) < drain + EXIT_MARGIN_S) {
      problems.push(`TimeoutStopSec ${stop ?? '90 (the default)'} must be at least DRAIN_DEADLINE_MS ${drain} s + ${EXIT_MARGIN_S} s, or systemd SIGKILLs replies mid-drain`);
    }
  }
  if (one('Restart') !== 'on-failure') problems.push(`Restart=${one('Restart') ?? 'no'}: use on-failure (a drain exits 0 and stays stopped)`);
  const user = one('User');
  if (user === undefined || user === 'root' || user === '0') problems.push('the service runs as root: set User=');
  if (one('NoNewPrivileges') !== 'yes') problems.push('NoNewPrivileges is not yes');
  if (one('MemoryDenyWriteExecute') === 'yes') problems.push("MemoryDenyWriteExecute=yes kills Node: V8's JIT writes code it then runs");
  return problems;
}

export function readIfExists(path: string): string | undefined {
  return existsSync(path) ? readFileSync(path, 'utf8') : undefined;
}
