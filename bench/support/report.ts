import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fmtNumber } from './stats';
import type { ResultRow, Target } from './types';

export interface RunMeta {
  startedAt: string;
  finishedAt?: string;
  gitCommit: string;
  cpus: number;
  cpuModel: string;
  loadAverage: number[];
  node: string;
  postgres: string;
  postgresSource: string;
  scenarios: string[];
  /** Settings other than the defaults the service ran with (BENCH_SERVICE_*), empty when none. */
  serviceOverrides?: string;
}

export interface RunReport {
  meta: RunMeta;
  rows: ResultRow[];
  notes: Record<string, string[]>;
  details: Record<string, Record<string, unknown>>;
  /** Extra markdown sections printed after the table (e.g. a profile summary). */
  sections: { title: string; markdown: string }[];
  failed: boolean;
}

const OP_TEXT: Record<Target['op'], string> = { '>=': '≥', '>': '>', '<=': '≤', '<': '<', '==': '=' };

export function targetText(t: Target | undefined): string {
  return t ? `${OP_TEXT[t.op]} ${fmtNumber(t.value)}` : '';
}

export function meets(value: number | string | null, t: Target | undefined): boolean | null {
  if (!t) return null;
  if (typeof value !== 'number' || !Number.isFinite(value)) return false;
  switch (t.op) {
    case '>=':
      return value >= t.value;
    case '>':
      return value > t.value;
    case '<=':
      return value <= t.value;
    case '<':
      return value < t.value;
    case '==':
      return value === t.value;
  }
}

/** Fills in `ok` from the target when the scenario left it undefined. */
export function judge(row: ResultRow): ResultRow {
  return row.ok === undefined ? { ...row, ok: meets(row.value, row.target) } : row;
}

function cell(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function valueText(r: ResultRow): string {
  if (r.display !== undefined) return r.display;
  if (r.value === null) return 'n/a';
  const v = typeof r.value === 'number' ? fmtNumber(r.value) : r.value;
  return r.unit ? `${v} ${r.unit}` : v;
}

export function renderMarkdown(report: RunReport): string {
  const m = report.meta;
  const lines: string[] = [];
  lines.push(`# Benchmark results (${m.scenarios.join(', ')})`);
  lines.push('');
  lines.push(`- started ${m.startedAt}, commit ${m.gitCommit}`);
  lines.push(`- os.cpus().length = **${m.cpus}** (${m.cpuModel}); load average at start ${m.loadAverage.map((l) => l.toFixed(2)).join(' / ')}`);
  lines.push(`- Node ${m.node}`);
  lines.push(`- Postgres (${m.postgresSource}): ${m.postgres}`);
  lines.push(`- Postgres, the service, the simulator and autocannon (in the runner) all share these ${m.cpus} cores.`);
  if (m.serviceOverrides) lines.push(`- ⚠ the service ran with settings other than the defaults: ${m.serviceOverrides}`);
  lines.push('');
  lines.push('| scenario | metric | value | target | ok |');
  lines.push('| --- | --- | ---: | --- | :---: |');
  for (const r of report.rows) {
    const ok = r.ok === true ? '✅' : r.ok === false ? (r.assertion ? '❌ (check)' : '❌') : '';
    lines.push(`| ${cell(r.scenario)} | ${cell(r.metric)} | ${cell(valueText(r))} | ${cell(r.targetText ?? targetText(r.target))} | ${ok} |`);
  }
  const notes = Object.entries(report.notes).filter(([, n]) => n.length > 0);
  if (notes.length > 0) {
    lines.push('');
    lines.push('Notes:');
    for (const [scenario, list] of notes) for (const n of list) lines.push(`- ${scenario}: ${n}`);
  }
  for (const s of report.sections) {
    lines.push('');
    lines.push(`## ${s.title}`);
    lines.push('');
    lines.push(s.markdown.trimEnd());
  }
  lines.push('');
  return lines.join('\n');
}

export async function writeReport(dir: string, report: RunReport): Promise<{ json: string; md: string }> {
  await mkdir(dir, { recursive: true });
  const json = path.join(dir, 'latest.json');
  const md = path.join(dir, 'latest.md');
  await writeFile(json, `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(md, renderMarkdown(report));
  return { json, md };
}
