import { readFileSync } from 'node:fs';

/** The parts of a V8 `.cpuprofile` (from `node --cpu-prof`) that the summary needs. */
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface Share {
  name: string;
  samples: number;
  /** % of the busy samples (not idle, not in a socket write). */
  pct: number;
}

export interface ProfileSummary {
  wallSeconds: number;
  samples: number;
  /** % of all samples that were idle (the event loop waiting for I/O). */
  idlePct: number;
  /**
   * % of the non-idle samples that landed in a native socket write (writev). They are left out of the
   * tables below, whose percentages are of the remaining samples: see profileMarkdown for why.
   */
  socketWritePct: number;
  /** Self time by category: a package, a Node core area, an app file, or a V8 bucket such as GC. */
  selfByCategory: Share[];
  /**
   * Each busy sample charged to the nearest package or app frame on its stack (Node core and native frames
   * charged to whoever called them): "whose work is this".
   */
  attributed: Share[];
  /** Samples with the package or app file anywhere on the stack (overlapping; a caller's total cost). */
  inclusive: Share[];
  topSelfFunctions: Share[];
}

const V8_BUCKETS = new Set(['(garbage collector)', '(idle)', '(program)', '(root)']);

/** `…/node_modules/@scope/pkg/x.js` → `@scope/pkg`; `node:internal/streams/…` → `node:streams`; app files → `app:src/…`. */
export function categoryOf(url: string, functionName: string, appRoot: string): string {
  if (!url) {
    if (V8_BUCKETS.has(functionName)) return functionName;
    // Socket writes get their own line: see the note in profileMarkdown.
    return functionName === 'writev' || functionName === 'writeUtf8String' || functionName === 'writeBuffer' ? 'socket write (native)' : '(native)';
  }
  const u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const parts = u.slice(nm + '/node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  if (u.startsWith('node:')) {
    const parts = u.slice(5).split('/');
    const area = parts[0] === 'internal' ? (parts[1] ?? 'internal') : parts[0]!;
    return `node:${area.replace(/\.js$/, '')}`;
  }
  if (u.startsWith(appRoot)) return `app:${u.slice(appRoot.length).replace(/^\/+/, '').replace(/^dist\//, '')}`;
  return u;
}

const isOwner = (cat: string) => !cat.startsWith('node:') && !cat.startsWith('(') && cat !== 'socket write (native)';

/**
 * Summarises where a process spent its CPU. Counts samples rather than summing time deltas: a thread that
 * waits for a CPU (a busy machine) gets one late sample, not the whole wait, so counts track CPU time better.
 */
export function summariseCpuProfile(file: string, appRoot: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const category = new Map(profile.nodes.map((n) => [n.id, categoryOf(n.callFrame.url, n.callFrame.functionName, appRoot)]));

  const self = new Map<string, number>();
  const attributed = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const fnSelf = new Map<string, number>();
  const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  let idle = 0;
  let socketWrites = 0;
  for (const id of profile.samples) {
    const node = byId.get(id)!;
    const cat = category.get(id)!;
    if (cat === '(idle)') {
      idle += 1;
      continue;
    }
    if (cat === 'socket write (native)') {
      socketWrites += 1;
      continue;
    }
    add(self, cat);
    add(fnSelf, `${node.callFrame.functionName || '(anonymous)'} ${cat}${node.callFrame.url ? `:${node.callFrame.lineNumber + 1}` : ''}`);
    let owner: string | undefined = V8_BUCKETS.has(cat) ? cat : undefined;
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const c = category.get(cur)!;
      if (!isOwner(c)) continue;
      owner ??= c;
      if (!seen.has(c)) {
        seen.add(c);
        add(inclusive, c);
      }
    }
    add(attributed, owner ?? `node core only: ${cat}`);
  }
  const busy = profile.samples.length - idle - socketWrites;
  const shares = (m: Map<string, number>, limit = top): Share[] =>
    [...m.entries()]
      .map(([name, samples]) => ({ name, samples, pct: busy > 0 ? (samples / busy) * 100 : 0 }))
      .sort((a, b) => b.samples - a.samples)
      .slice(0, limit);
  return {
    wallSeconds: (profile.endTime - profile.startTime) / 1e6,
    samples: profile.samples.length,
    idlePct: profile.samples.length ? (idle / profile.samples.length) * 100 : 0,
    socketWritePct: busy + socketWrites > 0 ? (socketWrites / (busy + socketWrites)) * 100 : 0,
    selfByCategory: shares(self),
    attributed: shares(attributed),
    inclusive: shares(inclusive, top + 10),
    topSelfFunctions: shares(fnSelf),
  };
}

export function profileMarkdown(s: ProfileSummary): string {
  const table = (title: string, rows: Share[]) =>
    [`| ${title} | samples | % |`, '| --- | ---: | ---: |', ...rows.map((r) => `| ${r.name.replace(/\|/g, '\\|')} | ${r.samples} | ${r.pct.toFixed(1)} |`)].join('\n');
  return [
    `${s.samples} samples over ${s.wallSeconds.toFixed(1)} s of the service process (start-up, waits, warm-up and drain included); idle ${s.idlePct.toFixed(1)} % of them.`,
    '',
    `${s.socketWritePct.toFixed(1)} % of the non-idle samples landed in the native \`writev\` of a socket. They are left out below (percentages are of the rest): ` +
      'a socket write itself typically costs microseconds, but on a saturated box the writer is often preempted right after it wakes its peer ' +
      '(Postgres, autocannon, the simulator), and the profiler\'s pending signal is then delivered there when the process runs again: those samples measure waiting for a CPU, not work.',
    '',
    'Whose work: each sample charged to the nearest package or app frame on its stack (Node core and native code charged to their caller):',
    '',
    table('owner', s.attributed),
    '',
    'Self time by package / area:',
    '',
    table('category (self)', s.selfByCategory),
    '',
    'Inclusive (package or app file anywhere on the stack; overlaps):',
    '',
    table('package / file (inclusive)', s.inclusive),
    '',
    'Top functions by self time:',
    '',
    table('function', s.topSelfFunctions),
  ].join('\n');
}
