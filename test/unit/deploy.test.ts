import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import { parse, parseAllDocuments } from 'yaml';

/**
 * The deployment artefacts, checked with the ecosystem's own validators:
 * - docker-compose.yml: Debian's docker-compose 1.29 (`config -q`) and the Compose Specification JSON
 *   schema that Compose v2 validates against (bundled by the npm package dclint), with ajv;
 * - deploy/k8s: rendered by `kubectl kustomize`, every object validated by the npm package
 *   kubernetes-models (validators generated from the Kubernetes OpenAPI schemas), plus the policy the
 *   issue asks for (replicas, probes, non-root read-only root filesystem, PDB, migration Job, drain times);
 * - deploy/monitoring: `promtool check rules`, `promtool test rules`, `promtool check config`, and every
 *   metric the dashboard and the rules name is one the service exports (or a notifications metric).
 * A missing tool fails the test in CI (CI=true; .ci/run installs them) and skips it, loudly, elsewhere.
 */

const ROOT = path.resolve(__dirname, '../..');
const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

function needs(tool: string, install: string): boolean {
  if (has(tool)) return true;
  if (process.env.CI) throw new Error(`${tool} is not installed (${install}); CI must have it`);
  console.warn(`\n!!!!! ${tool} is not installed (${install}): its checks are SKIPPED here !!!!!\n`);
  return false;
}

function run(cmd: string, args: string[], opts: { cwd?: string } = {}): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { cwd: opts.cwd ?? ROOT, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** An env file with throwaway values for every secret compose requires. */
function composeEnv(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'cr-compose-'));
  const file = path.join(dir, 'compose.env');
  writeFileSync(file, ['POSTGRES_PASSWORD=pw-check-0123', 'API_KEYS=check-key-0123456789abcdef', 'CLASSROOM_SECRET=whsec_MDEyMzQ1Njc4OWFiY2RlZg==', 'GRAFANA_ADMIN_PASSWORD=check-0123'].join('\n'));
  return file;
}

describe('docker-compose.yml', () => {
  const file = path.join(ROOT, 'docker-compose.yml');
  const doc = parse(readFileSync(file, 'utf8'), { merge: true }) as { services: Record<string, Record<string, unknown>>; name?: unknown };

  test('is valid under the Compose Specification schema (what Compose v2 checks)', () => {
    const schema = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/dclint/schemas/compose.schema.json'), 'utf8')) as Record<string, unknown>;
    // The file names the draft-07 meta-schema by an https URL ajv does not alias; it is draft-07 all the same.
    delete schema.$schema;
    const ajv = new Ajv({ allErrors: true, strict: false });
    addFormats(ajv);
    const validate = ajv.compile(schema);
    const raw = parse(readFileSync(file, 'utf8'), { merge: true }) as unknown;
    expect({ valid: validate(raw), errors: validate.errors ?? null }).toEqual({ valid: true, errors: null });
    // And the schema does reject a broken file (a typo in a service key).
    const broken = structuredClone(raw) as { services: Record<string, Record<string, unknown>> };
    broken.services['service-1']!.healtcheck = {};
    expect(validate(broken)).toBe(false);
  });

  test('Debian docker-compose 1.29 accepts it (config -q), with and without the monitoring profile, and refuses missing secrets', () => {
    if (!needs('docker-compose', 'apt-get install docker-compose')) return;
    const env = composeEnv();
    for (const profile of [[], ['--profile', 'monitoring']]) {
      const r = run('docker-compose', ['--env-file', env, '-f', file, ...profile, 'config', '-q']);
      expect({ profile, ...r }).toEqual({ profile, status: 0, out: '' });
    }
    const empty = path.join(mkdtempSync(path.join(tmpdir(), 'cr-compose-')), 'empty.env');
    writeFileSync(empty, '');
    const refused = run('docker-compose', ['--env-file', empty, '-f', file, 'config', '-q']);
    expect(refused.status).not.toBe(0);
    expect(refused.out).toMatch(/set (POSTGRES_PASSWORD|API_KEYS|CLASSROOM_SECRET|GRAFANA_ADMIN_PASSWORD) in \.env/);
  });

  test('two replicas over one database, the simulator, and a monitoring profile scraping every replica', () => {
    expect(doc.name).toBeUndefined(); // docker-compose 1.29 rejects a top-level name
    const replicas = Object.keys(doc.services).filter((s) => /^service-\d+$/.test(s));
    expect(replicas).toHaveLength(2);
    const urls = replicas.map((s) => (doc.services[s]!.environment as Record<string, string>).DATABASE_URL);
    expect(new Set(urls).size).toBe(1);
    for (const s of replicas) {
      const env = doc.services[s]!.environment as Record<string, string>;
      // Explicit on a non-loopback HOST: a real partners file and the public callback base.
      expect(env.HOST).toBe('0.0.0.0');
      expect(env.PARTNERS_FILE).toBe('/app/config/partners.compose.json');
      expect(env.PUBLIC_BASE_URL).toMatch(/^http:\/\/service:3000$/);
      // Every secret from .env, no demo default.
      for (const key of ['API_KEYS', 'CLASSROOM_SECRET']) expect(env[key]).toMatch(/^\$\{[A-Z_]+:\?/);
    }
    expect(doc.services.simulator).toBeDefined();
    expect(doc.services.prometheus!.profiles).toEqual(['monitoring']);
    expect(doc.services.grafana!.profiles).toEqual(['monitoring']);
    const prom = parse(readFileSync(path.join(ROOT, 'deploy/monitoring/prometheus/prometheus.yml'), 'utf8')) as { scrape_configs: { static_configs: { targets: string[] }[] }[] };
    expect(prom.scrape_configs[0]!.static_configs[0]!.targets.sort()).toEqual(replicas.map((s) => `${s}:3000`).sort());
  });
});

describe('deploy/k8s (kustomize base)', () => {
  let objects: Record<string, any>[] = [];

  beforeAll(() => {
    if (!needs('kubectl', 'apt-get install kubernetes-client')) return;
    const rendered = execFileSync('kubectl', ['kustomize', path.join(ROOT, 'deploy/k8s')], { encoding: 'utf8' });
    objects = parseAllDocuments(rendered).map((d) => d.toJS() as Record<string, any>);
  });

  const find = (kind: string) => objects.filter((o) => o.kind === kind);

  test('every rendered object is valid under the Kubernetes schemas (kubernetes-models)', () => {
    if (objects.length === 0) return;
    const models: Record<string, string> = {
      Deployment: 'kubernetes-models/apps/v1/Deployment',
      Service: 'kubernetes-models/v1/Service',
      ServiceAccount: 'kubernetes-models/v1/ServiceAccount',
      ConfigMap: 'kubernetes-models/v1/ConfigMap',
      PodDisruptionBudget: 'kubernetes-models/policy/v1/PodDisruptionBudget',
      Job: 'kubernetes-models/batch/v1/Job',
    };
    expect(objects.map((o) => o.kind).sort()).toEqual(['ConfigMap', 'ConfigMap', 'Deployment', 'Job', 'PodDisruptionBudget', 'Service', 'ServiceAccount']);
    for (const o of objects) {
      const Model = Object.values(require(models[o.kind]!) as Record<string, new (d: unknown) => { validate(): void }>)[0]!;
      expect(() => new Model(o).validate()).not.toThrow();
    }
    // The validator does catch a wrong type.
    const Deployment = require('kubernetes-models/apps/v1/Deployment').Deployment as new (d: unknown) => { validate(): void };
    const broken = structuredClone(find('Deployment')[0]!);
    broken.spec.replicas = 'two';
    expect(() => new Deployment(broken).validate()).toThrow(/replicas/);
  });

  test('2+ replicas, probes, resources, non-root read-only root filesystem, PDB, migration Job, drain within the grace period', () => {
    if (objects.length === 0) return;
    const deployment = find('Deployment')[0]!;
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
    const pod = deployment.spec.template.spec;
    const c = pod.containers[0];
    expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(c.startupProbe.httpGet.path).toBe('/healthz');
    expect(c.resources.requests.cpu).toBeDefined();
    expect(c.resources.limits.memory).toBeDefined();
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).not.toBe(0);
    expect(c.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    const env = Object.assign({}, ...find('ConfigMap').map((m) => m.data)) as Record<string, string>;
    const drainSeconds = (Number(env.SHUTDOWN_READINESS_DELAY_MS) + Number(env.SHUTDOWN_TIMEOUT_MS)) / 1000;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(drainSeconds + 5);
    // Secrets come from the Secret, never from the ConfigMaps.
    const secretKeys = c.env.filter((e: any) => e.valueFrom?.secretKeyRef).map((e: any) => e.name).sort();
    expect(secretKeys).toEqual(['API_KEYS', 'CLASSROOM_SECRET', 'DATABASE_URL']);
    for (const key of Object.keys(env)) expect(key).not.toMatch(/SECRET|API_KEYS|DATABASE_URL|PASSWORD/);
    // The partners file from a ConfigMap, explicitly named, and an explicit public base URL.
    expect(env.PARTNERS_FILE).toBe('/etc/callback-reconciler/partners.json');
    expect(env.PUBLIC_BASE_URL).toMatch(/^https:\/\//);
    const partners = find('ConfigMap').find((m) => m.data['partners.json']);
    expect(JSON.parse(partners!.data['partners.json']).partners[0].callback.secret).toMatch(/^env:/);
    // The PDB selects the Deployment's pods.
    const pdb = find('PodDisruptionBudget')[0]!;
    expect(deployment.spec.template.metadata.labels).toMatchObject(pdb.spec.selector.matchLabels);
    expect(pdb.spec.minAvailable).toBe(1);
    // The migration Job runs the built entry point from the same image, as non-root.
    const job = find('Job')[0]!;
    const jc = job.spec.template.spec.containers[0];
    expect(jc.image).toBe(c.image);
    expect(jc.command.join(' ')).toContain('dist/src/db/migrate-cli.js');
    expect(job.spec.template.spec.securityContext.runAsNonRoot).toBe(true);
  });
});

describe('deploy/monitoring', () => {
  const dir = path.join(ROOT, 'deploy/monitoring/prometheus');

  test('promtool: the rules check, their unit tests pass, and the compose Prometheus config checks', () => {
    if (!needs('promtool', 'apt-get install prometheus')) return;
    const check = run('promtool', ['check', 'rules', 'alerts.yml'], { cwd: dir });
    expect(check).toEqual({ status: 0, out: expect.stringContaining('SUCCESS') });
    const unit = run('promtool', ['test', 'rules', 'alerts.test.yml'], { cwd: dir });
    expect(unit).toEqual({ status: 0, out: expect.stringContaining('SUCCESS') });
    // The config names the rules at their in-container path; check a copy that points at the file here.
    const tmp = mkdtempSync(path.join(tmpdir(), 'cr-prom-'));
    writeFileSync(path.join(tmp, 'prometheus.yml'), readFileSync(path.join(dir, 'prometheus.yml'), 'utf8').replace('/etc/prometheus/alerts.yml', path.join(dir, 'alerts.yml')));
    const config = run('promtool', ['check', 'config', path.join(tmp, 'prometheus.yml')]);
    expect(config).toEqual({ status: 0, out: expect.stringContaining('SUCCESS') });
  });

  test('every alert has a runbook section, and every runbook section an alert', () => {
    const rules = parse(readFileSync(path.join(dir, 'alerts.yml'), 'utf8')) as { groups: { rules: { alert: string; annotations: { runbook_url: string } }[] }[] };
    const alerts = rules.groups.flatMap((g) => g.rules.map((r) => r.alert)).sort();
    const runbook = readFileSync(path.join(ROOT, 'docs/runbook.md'), 'utf8');
    const sections = [...runbook.matchAll(/^## (\S+)$/gm)].map((m) => m[1]!).sort();
    expect(sections).toEqual(alerts);
    for (const g of rules.groups) for (const r of g.rules) expect(r.annotations.runbook_url).toBe(`docs/runbook.md#${r.alert.toLowerCase()}`);
    for (const section of runbook.split(/^## /m).slice(1)) {
      expect(section).toMatch(/\*\*Means\*\*/);
      expect(section).toMatch(/\*\*Look\*\*/);
      expect(section).toMatch(/\*\*Do\*\*/);
    }
  });

  test('the dashboard is provisioned and covers what the issue lists; its queries and the rules name only metrics the service exports', () => {
    const dashboards = readdirSync(path.join(ROOT, 'deploy/monitoring/grafana/dashboards'));
    expect(dashboards).toEqual(['callback-reconciler.json']);
    const dash = JSON.parse(readFileSync(path.join(ROOT, 'deploy/monitoring/grafana/dashboards/callback-reconciler.json'), 'utf8')) as { uid: string; panels: { type: string; title: string; targets?: { expr: string }[]; datasource?: { uid: string } }[] };
    const panels = dash.panels.filter((p) => p.type !== 'row');
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    const datasource = parse(readFileSync(path.join(ROOT, 'deploy/monitoring/grafana/provisioning/datasources/prometheus.yml'), 'utf8')) as { datasources: { uid: string }[] };
    for (const p of panels) expect(p.datasource?.uid).toBe(datasource.datasources[0]!.uid);
    for (const needle of ['tasks_created_total', 'callbacks_total', 'reconciler_checks_total', 'http_request_duration_seconds_bucket', 'tasks_open', 'oldest_open_task_age_seconds', 'settlement_conflicts_total', 'partner_breaker_open', 'notifications_pending', 'db_pool_waiting', 'db_pool_connections']) {
      expect({ needle, used: exprs.some((e) => e.includes(needle)) }).toEqual({ needle, used: true });
    }
    const rules = readFileSync(path.join(dir, 'alerts.yml'), 'utf8');
    const named = new Set([...[...exprs, rules].join('\n').matchAll(/\b((?:callback_reconciler|http|process|nodejs)_[a-z_]+)/g)].map((m) => m[1]!.replace(/_(bucket|count|sum)$/, '')));
    const exported = exportedMetricNames();
    // Metrics of the notifications feature (SERVICE.md) are allowed before that feature has landed.
    const notifications = ['callback_reconciler_notifications_total', 'callback_reconciler_notifications_pending'];
    for (const name of named) expect({ name, exported: exported.has(name) || notifications.includes(name) }).toEqual({ name, exported: true });
  });
});

/** Names of every metric a Metrics registry with default metrics holds. */
function exportedMetricNames(): Set<string> {
  const { Metrics } = require('../../src/observability/metrics') as typeof import('../../src/observability/metrics');
  const m = new Metrics({ defaultMetrics: true });
  return new Set(m.registry.getMetricsAsArray().map((x) => x.name));
}
