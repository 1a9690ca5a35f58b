/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { createTestDatabase, type TestDatabase } from '../support/database';
import { eventually, startTestService, TEST_API_KEY, type TestService } from '../support/service';
import { SCENARIO_ENV, SCENARIO_MAIN_PARTNER, SCENARIO_PARTNERS, seedStoryScenario, type StoryScenario } from '../support/story-scenario';

/**
 * The operator console in a real browser (Debian's chromium driven by playwright-core) against the real
 * service on real Postgres with the simulator as partner: sign in, search, a task's story, Reconcile now,
 * list filters and paging, keyboard use, a phone-sized screen, the CSP, and axe-core on every page.
 *
 * Without a chromium binary this file is skipped with a warning, unless REQUIRE_CHROMIUM is set (CI sets
 * it after installing chromium), then it fails.
 */

const CANDIDATES = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].filter(Boolean) as string[];
const executablePath = CANDIDATES.find((p) => existsSync(p));
if (!executablePath) {
  const message = `NO CHROMIUM FOUND (looked in ${CANDIDATES.join(', ')}): the console browser tests are SKIPPED. Install it: apt-get install -y chromium`;
  if (process.env.REQUIRE_CHROMIUM) throw new Error(message);
  console.warn(`\n\n*** ${message} ***\n\n`);
}
const describeBrowser = executablePath ? describe : describe.skip;

const ONCALL_KEY = 'oncall-key-0123456789abcdef';
/** Debian's chromium, headless, with nothing that talks to the network on its own. */
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const SCREENSHOTS = process.env.CONSOLE_SCREENSHOTS ? path.resolve(__dirname, '../../docs/screenshots') : mkdtempSync(path.join(tmpdir(), 'cr-shots-'));
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

let db: TestDatabase;
let svc: TestService;
let s: StoryScenario;
let context: BrowserContext;
let page: Page;
let profileDir: string;
const logged: string[] = [];
const requestedUrls: string[] = [];
const pageProblems: string[] = [];

describeBrowser('operator console in chromium', () => {
  beforeAll(async () => {
    db = await createTestDatabase();
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logged.push(chunk.toString());
        done();
      },
    });
    svc = await startTestService({
      db,
      partner: SCENARIO_MAIN_PARTNER,
      extraPartners: SCENARIO_PARTNERS,
      env: { ...SCENARIO_ENV, API_KEYS: `${TEST_API_KEY},oncall:${ONCALL_KEY}` },
      // Everything the service logs (info and up) is kept to check the key never shows in it.
      logger: pino({ level: 'info' }, sink),
    });
    s = await seedStoryScenario(svc, '');
    profileDir = mkdtempSync(path.join(tmpdir(), 'cr-chromium-'));
    mkdirSync(SCREENSHOTS, { recursive: true });
    // A fresh profile directory per run (Playwright passes it as --user-data-dir).
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: executablePath!,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 800 },
      colorScheme: 'light',
      timezoneId: 'UTC',
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('request', (r) => requestedUrls.push(r.url()));
    page.on('console', (m) => {
      if (m.type() === 'error') pageProblems.push(m.text());
    });
    page.on('pageerror', (e) => pageProblems.push(e.message));
  }, 180_000);

  afterAll(async () => {
    await context?.close();
    await svc?.stop();
    await db?.drop();
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  });

  /** axe-core on the page as it is; no serious or critical violation. Injected over CDP, which the CSP does not govern. */
  /** A screenshot for docs/screenshots (with CONSOLE_SCREENSHOTS=1), without a stray focus ring. */
  async function shoot(name: string, on: Page = page): Promise<void> {
    await on.evaluate(() => (document.activeElement as HTMLElement | null)?.blur());
    await on.screenshot({ path: path.join(SCREENSHOTS, name), fullPage: true });
  }

  async function expectAccessible(what: string): Promise<void> {
    await page.evaluate(AXE);
    const result = (await page.evaluate(() => (window as unknown as { axe: { run: (o: unknown) => Promise<unknown> } }).axe.run({ resultTypes: ['violations'] }))) as {
      violations: Array<{ id: string; impact: string; nodes: Array<{ target: string[] }> }>;
    };
    const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => `${what}: ${v.id} (${v.impact}) at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
    expect(bad).toEqual([]);
  }

  /** Opens a task's story and waits for that task's own heading (a hash change keeps the old view until the new one is drawn). */
  async function openStory(task: { id: string; requestNo: string }): Promise<void> {
    await page.goto(`${svc.url}/console/#/task/${task.id}`);
    await page.getByRole('heading', { name: task.requestNo, exact: true }).waitFor();
    await page.getByRole('heading', { name: 'Timeline' }).waitFor();
  }

  const timelineKinds = () => page.$$eval('ol.timeline > li', (lis) => lis.map((li) => `${li.getAttribute('data-kind')}: ${li.querySelector('.entry-title > span:last-child')?.textContent ?? ''}`));
  /** Each row as "requestNo partner kind status" (not the relative times, which move). */
  const rowTexts = () =>
    page.$$eval('table.task-table tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('th, td')].slice(0, 4).map((c) => c.textContent ?? '').join(' ')));

  test('serves the console with a strict Content-Security-Policy and no inline code', async () => {
    const res = await svc.api.get('/console/');
    expect(res.status).toBe(200);
    const csp = String(res.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("style-src 'self'");
    expect(csp).toContain("form-action 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(res.data).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(res.data).not.toMatch(/\sstyle=|<style/);
    expect(res.data).not.toMatch(/https?:\/\//);
  });

  test('a wrong key says so; the right one signs in and shows the overview', async () => {
    await page.goto(`${svc.url}/console/`);
    const key = page.getByLabel('API key');
    await key.waitFor();
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('api-key');
    await expectAccessible('sign-in');
    await key.fill('wrong-key-0123456789abcdef');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('That API key is not valid.').waitFor();
    // Keyboard only: the field keeps focus, Enter submits.
    await key.fill(ONCALL_KEY);
    await key.press('Enter');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.getByText('Signed in as').waitFor();
    expect(await page.textContent('#who-label')).toContain('oncall');
    const rows = await page.$$eval('table.overview-table tbody tr', (trs) => trs.map((tr) => tr.textContent ?? ''));
    expect(rows.map((r) => r.split(/\d/)[0])).toEqual(expect.arrayContaining(['payouts', 'shipping', 'billing']));
    expect(await page.$eval('table.overview-table', (t) => t.textContent)).toContain('closed');
    await expectAccessible('overview');
    await shoot('overview.png');
  });

  test('the overview refreshes by itself from its JSON endpoint', async () => {
    const before = await page.textContent('#overview-updated');
    const refreshed = page.waitForResponse((r) => r.url().endsWith('/v1/overview') && r.status() === 200, { timeout: 20_000 });
    await refreshed;
    await eventually(async () => ((await page.textContent('#overview-updated')) !== before ? true : undefined), 'the overview to show a newer time', 20_000, 200);
  });

  test('search by request number lists each partner’s task; one match opens its story', async () => {
    const search = page.getByRole('searchbox', { name: 'Request number or task id' });
    await search.fill(s.shared[0]!.requestNo);
    await search.press('Enter');
    await page.getByRole('heading', { name: 'Search results' }).waitFor();
    const found = await rowTexts();
    expect(found).toHaveLength(2);
    expect(found.join(' ')).toContain('payouts');
    expect(found.join(' ')).toContain('billing');
    await expectAccessible('search results');

    await search.fill(s.conflict.requestNo);
    await search.press('Enter');
    await page.getByRole('heading', { name: 'Timeline' }).waitFor();
    expect(page.url()).toContain(`#/task/${s.conflict.id}`);
    await search.fill('no-such-order');
    await search.press('Enter');
    await page.getByText('No task has the id or request number “no-such-order”.').waitFor();
    await search.fill(s.transient.id);
    await search.press('Enter');
    await page.getByRole('heading', { name: s.transient.requestNo }).waitFor();
  });

  test('a task’s story: fields and one timeline, oldest first, with every kind of entry', async () => {
    // Conflict: created, dispatched, the callback that settled it, the contradicting one, refused and unreadable ones.
    await openStory(s.conflict);
    const conflict = await timelineKinds();
    const order = (entries: string[], wanted: RegExp[]) => {
      let at = -1;
      for (const w of wanted) {
        const i = entries.findIndex((e, k) => k > at && w.test(e));
        expect({ wanted: String(w), found: i >= 0, entries }).toEqual(expect.objectContaining({ found: true }));
        at = i;
      }
    };
    order(conflict, [/^status: Created as pending/, /^dispatch: Dispatch attempt 1: received/, /^callback: Callback: succeeded/, /^status: .*→ succeeded/, /^callback: Callback: failed/, /^conflict: Conflict: partner reported failed/, /^callback: Callback$/, /^callback: Callback: unreadable/]);
    const story = await page.textContent('main');
    expect(story).toContain('refused: signature does not match');
    expect(story).toContain('contradicted the final status');
    expect(story).toContain('exploded');
    expect(await page.$eval('dl.fields', (d) => d.textContent)).toContain(s.conflict.id);
    await expectAccessible('task story');
    await shoot('task-story.png');

    // Settled by callback, delivered three times: the duplicates are in the story.
    await openStory(s.byCallback);
    order(await timelineKinds(), [/^status: Created/, /^dispatch: /, /^callback: Callback: succeeded/, /^status: .*→ succeeded/, /^duplicate: 2 duplicate deliveries/]);

    // Settled by poll: a status check, then the move with source poll.
    await openStory(s.byPoll);
    order(await timelineKinds(), [/^status: Created/, /^dispatch: Dispatch attempt 1: received/, /^status: pending → dispatched/, /^manual: Reconcile requested by key-/, /^check: Status check: partner says succeeded/, /^status: dispatched → succeeded/]);
    expect(await page.textContent('ol.timeline')).toContain('source: poll');

    // The callback came first: it is listed before the task was created, and applied after.
    await openStory(s.early);
    order(await timelineKinds(), [/^callback: Callback: succeeded/, /^status: Created/, /^status: pending → succeeded/]);
    expect(await page.textContent('ol.timeline')).toContain('arrived before the task existed');

    // A dispatch that failed first: its error class.
    await openStory(s.transient);
    order(await timelineKinds(), [/^status: Created/, /^dispatch: Dispatch attempt 1: transient/, /^dispatch: Dispatch attempt 2: received/]);
    expect(await page.textContent('ol.timeline')).toContain('error class: http_5xx');
  });

  test('Reconcile now, by keyboard: asks for confirmation, shows the outcome, and is written with the key’s label', async () => {
    await openStory(s.open);
    const button = page.getByRole('button', { name: 'Reconcile now' });
    await button.waitFor();
    await button.focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Reconcile now?' });
    await dialog.waitFor();
    await expectAccessible('confirmation dialog');
    // Escape cancels: nothing is sent.
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    await button.focus();
    await page.keyboard.press('Enter');
    await dialog.waitFor();
    await page.keyboard.press('Tab'); // from Cancel to the confirming button
    await page.keyboard.press('Enter');
    await page.getByText(/Outcome: The partner says processing; the task is dispatched/).waitFor({ timeout: 30_000 });
    await shoot('reconcile-now.png');
    const entries = await timelineKinds();
    expect(entries.filter((e) => /^manual: Reconcile requested by oncall$/.test(e))).toHaveLength(1);
    const events = (await svc.api.get(`/v1/tasks/${s.open.id}/events`)).data.items;
    expect(events.filter((e: { source: string }) => e.source === 'manual')).toEqual([expect.objectContaining({ detail: { type: 'manual', action: 'reconcile', by: 'oncall' } })]);
    // A final task offers no reconcile.
    await openStory(s.byCallback);
    await page.getByText('Nothing to check: the task is succeeded.').waitFor();
    expect(await page.getByRole('button', { name: 'Reconcile now' }).isDisabled()).toBe(true);
  });

  test('the task list: newest first, status and partner filters, keyset paging both ways', async () => {
    await page.goto(`${svc.url}/console/#/tasks`);
    await page.getByRole('heading', { name: 'Tasks' }).waitFor();
    await page.waitForSelector('table.task-table tbody tr');
    const first = await rowTexts();
    expect(first).toHaveLength(20);
    const newest = [...s.all].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
    expect(first[0]).toContain(newest[0]!.requestNo);
    await expectAccessible('task list');
    await shoot('task-list.png');

    await page.getByRole('button', { name: 'Older →' }).click();
    await page.getByText(/^Page 2 · /).waitFor();
    const second = await rowTexts();
    expect(second.length).toBe(s.all.length - 20);
    expect(second.some((r) => first.includes(r))).toBe(false);
    expect(second.at(-1)).toContain(newest.at(-1)!.requestNo);
    await page.getByRole('button', { name: '← Newer' }).click();
    await page.getByText(/^Page 1 · /).waitFor();
    expect(await rowTexts()).toEqual(first);

    await page.getByLabel('Status').selectOption('failed');
    await page.waitForFunction(() => location.hash.includes('status=failed'));
    await page.waitForFunction(() => [...document.querySelectorAll('table.task-table tbody tr')].every((tr) => tr.textContent?.includes('failed')));
    const failed = await rowTexts();
    expect(failed.length).toBe(s.all.filter((t) => t.payload.simulate && (t.payload.simulate as { outcome?: string }).outcome === 'failed').length);
    await page.getByLabel('Partner').selectOption('payouts');
    await page.waitForFunction(() => location.hash.includes('partner=payouts'));
    await page.waitForFunction(() => [...document.querySelectorAll('table.task-table tbody tr')].every((tr) => tr.textContent?.includes('payouts') || tr.textContent?.includes('No tasks')));
    await page.getByLabel('Status').selectOption('');
    await page.waitForFunction(() => !location.hash.includes('status='));
    const payments = await rowTexts();
    expect(payments.length).toBe(s.all.filter((t) => t.partner === 'payouts').length);
    expect(payments.every((r) => r.includes('payouts'))).toBe(true);
  });

  test('readable on a phone-sized screen: no sideways scrolling, story and list fit', async () => {
    const phone = await context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    // A new tab has its own sessionStorage: it signs in by itself.
    await phone.goto(`${svc.url}/console/`);
    await phone.getByLabel('API key').fill(ONCALL_KEY);
    await phone.getByLabel('API key').press('Enter');
    await phone.getByRole('heading', { name: 'Overview' }).waitFor();
    for (const [hash, heading] of [['#/overview', 'Overview'], ['#/tasks', 'Tasks'], [`#/task/${s.conflict.id}`, 'Timeline']] as const) {
      await phone.goto(`${svc.url}/console/${hash}`);
      await phone.getByRole('heading', { name: heading, exact: true }).waitFor();
      await phone.waitForLoadState('networkidle');
      const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      expect({ hash, overflow }).toEqual({ hash, overflow: 0 });
    }
    await phone.evaluate(() => (document.activeElement as HTMLElement | null)?.blur());
    await phone.screenshot({ path: path.join(SCREENSHOTS, 'task-story-phone.png'), fullPage: false });
    await phone.close();
  });

  test('every control has an accessible name; the key never reaches a URL or a log line; no CSP violation', async () => {
    await page.goto(`${svc.url}/console/#/tasks`);
    await page.waitForSelector('table.task-table tbody tr');
    const unnamed = await page.$$eval('button, input, select, a[href], summary, [tabindex]', (els) =>
      els.filter((el) => (el as HTMLElement).offsetParent !== null || el.tagName === 'INPUT').filter((el) => {
        const label = el.getAttribute('aria-label') || (el as HTMLInputElement).labels?.[0]?.textContent || el.textContent;
        return !label || label.trim() === '';
      }).map((el) => el.outerHTML.slice(0, 120)),
    );
    expect(unnamed.filter((h) => !h.startsWith('<pre'))).toEqual([]);
    expect(requestedUrls.length).toBeGreaterThan(20);
    expect(requestedUrls.filter((u) => u.includes(ONCALL_KEY) || u.includes(TEST_API_KEY))).toEqual([]);
    expect(logged.length).toBeGreaterThan(10);
    expect(logged.filter((l) => l.includes(ONCALL_KEY))).toEqual([]);
    expect(pageProblems.filter((p) => /Content Security Policy|Refused to/i.test(p))).toEqual([]);
    // Stored for this tab only, and forgotten on sign-out.
    expect(await page.evaluate(() => Object.values(sessionStorage))).toEqual([ONCALL_KEY]);
    expect(await page.evaluate(() => Object.keys(localStorage))).toEqual([]);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key').waitFor();
    expect(await page.evaluate(() => Object.keys(sessionStorage))).toEqual([]);
  });
});

describe('console without API_KEYS on a loopback host', () => {
  let openDb: TestDatabase;
  let open: TestService;
  let openContext: BrowserContext;
  let openProfile: string;
  beforeAll(async () => {
    if (!executablePath) return;
    openDb = await createTestDatabase();
    open = await startTestService({ db: openDb, env: { API_KEYS: '' } });
    openProfile = mkdtempSync(path.join(tmpdir(), 'cr-chromium-'));
    openContext = await chromium.launchPersistentContext(openProfile, { executablePath, args: CHROMIUM_ARGS });
  }, 60_000);
  afterAll(async () => {
    await openContext?.close();
    await open?.stop();
    await openDb?.drop();
    if (openProfile) rmSync(openProfile, { recursive: true, force: true });
  });
  (executablePath ? test : test.skip)('opens directly, without a sign-in form', async () => {
    const p = await openContext.newPage();
    await p.goto(`${open.url}/console/`);
    await p.getByRole('heading', { name: 'Overview' }).waitFor();
    expect(await p.textContent('#who-label')).toContain('Open access');
    expect(await p.getByLabel('API key').count()).toBe(0);
    await p.close();
  });
});
