// The operator console: sign in, overview, task list, search, and a task's story with its actions.
// Plain ES modules, no build step; everything comes from the service's own JSON API.
import { api, ApiError, fetchAll, forgetKey, storedKey, storeKey } from './api.js';
import { h, replace } from './dom.js';
import { age, clockTime, dateTime, json, statusBadge, timeAgo } from './format.js';
import { buildTimeline, KIND_LABEL } from './timeline.js';

const STATUSES = ['pending', 'dispatched', 'succeeded', 'failed', 'rejected', 'expired'];
const OPEN = ['pending', 'dispatched'];
const PAGE_SIZE = 20;
const OVERVIEW_REFRESH_MS = 5000;
const OUTCOME_WAIT_MS = 30_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const REQUEST_NO = /^[A-Za-z0-9._:-]{1,128}$/;

const main = /** @type {HTMLElement} */ (document.getElementById('main'));
const topbar = /** @type {HTMLElement} */ (document.getElementById('topbar'));
const searchForm = /** @type {HTMLFormElement} */ (document.getElementById('search-form'));
const searchInput = /** @type {HTMLInputElement} */ (document.getElementById('search-input'));
const whoLabel = /** @type {HTMLElement} */ (document.getElementById('who-label'));
const signOutButton = /** @type {HTMLButtonElement} */ (document.getElementById('sign-out'));
const dialog = /** @type {HTMLDialogElement} */ (document.getElementById('confirm-dialog'));

/** @type {{ session: any, partners: string[] | null, pages: Map<string, string[]>, timer: number | undefined, view: number }} */
const state = { session: null, partners: null, pages: new Map(), timer: undefined, view: 0 };

// ---------------------------------------------------------------- routing

function parseRoute() {
  const raw = location.hash.startsWith('#/') ? location.hash.slice(2) : 'overview';
  const [pathPart, queryPart = ''] = raw.split('?');
  const [name = 'overview', ...rest] = (pathPart || 'overview').split('/');
  return { name, arg: rest.map(decodeURIComponent).join('/'), query: new URLSearchParams(queryPart) };
}

/** @param {string} hash */
function go(hash) {
  if (location.hash === hash) void render();
  else location.hash = hash;
}

async function render() {
  if (!location.hash.startsWith('#/') && location.hash !== '') return; // in-page anchors (skip link)
  const view = ++state.view;
  window.clearInterval(state.timer);
  state.timer = undefined;
  if (!state.session) return;
  const route = parseRoute();
  replace(main, h('p', { class: 'loading', role: 'status' }, 'Loading…'));
  if (route.name !== 'find') searchInput.value = '';
  for (const a of document.querySelectorAll('[data-nav]')) {
    const current = a.getAttribute('data-nav') === (route.name === 'task' || route.name === 'find' ? 'tasks' : route.name);
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (route.name === 'tasks') await tasksView(route.query, view);
    else if (route.name === 'task') await taskView(route.arg, view);
    else if (route.name === 'find') await findView(route.arg, view);
    else await overviewView(view);
  } catch (err) {
    if (view !== state.view) return;
    if (err instanceof ApiError && err.status === 401) return signedOut('Your API key is no longer accepted. Sign in again.');
    show(view, 'Something went wrong', h('div', { class: 'panel error', role: 'alert' }, describe(err)));
  }
}

/** @param {number} view @param {string} title @param {...any} content */
function show(view, title, ...content) {
  if (view !== state.view) return false;
  document.title = `${title} · callback-reconciler`;
  replace(main, ...content);
  return true;
}

/** @param {unknown} err */
function describe(err) {
  if (err instanceof ApiError) return `${err.message} (HTTP ${err.status})`;
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------- sign in

async function start() {
  searchForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = searchInput.value.trim();
    if (q) go(`#/find/${encodeURIComponent(q)}`);
  });
  signOutButton.addEventListener('click', () => {
    forgetKey();
    signedOut('Signed out.');
  });
  window.addEventListener('hashchange', () => void render());
  try {
    // With a stored key, or none at all (a loopback service without API_KEYS opens directly).
    state.session = await api('/v1/me');
    signedIn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      const hadKey = storedKey() !== null;
      forgetKey();
      signedOut(hadKey ? 'Your API key is no longer accepted. Sign in again.' : '');
    } else {
      replace(main, h('div', { class: 'panel error', role: 'alert' }, `The service does not answer: ${describe(err)}`));
    }
  }
}

function signedIn() {
  topbar.hidden = false;
  replace(whoLabel, state.session.authRequired ? ['Signed in as ', h('strong', null, state.session.label)] : h('span', null, 'Open access (loopback)'));
  signOutButton.hidden = !state.session.authRequired;
  void render();
}

/** @param {string} message */
function signedOut(message) {
  state.session = null;
  state.partners = null;
  window.clearInterval(state.timer);
  topbar.hidden = true;
  document.title = 'Sign in · callback-reconciler';
  const error = h('p', { class: 'form-error', id: 'key-error', role: 'alert' }, message);
  const input = /** @type {HTMLInputElement} */ (
    h('input', { id: 'api-key', name: 'apiKey', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'key-help key-error' })
  );
  const button = h('button', { type: 'submit', class: 'btn btn-primary btn-wide' }, 'Sign in');
  const form = h(
    'form',
    { class: 'signin-form', method: 'post', novalidate: true },
    h('label', { for: 'api-key' }, 'API key'),
    input,
    h('p', { class: 'help', id: 'key-help' }, 'Kept in this tab only (sessionStorage) and sent as a Bearer token.'),
    error,
    button,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) {
      replace(error, 'Enter an API key.');
      input.focus();
      return;
    }
    button.setAttribute('disabled', '');
    replace(error, '');
    try {
      const session = await api('/v1/me', { key });
      storeKey(key);
      input.value = '';
      state.session = session;
      signedIn();
    } catch (err) {
      replace(error, err instanceof ApiError && err.status === 401 ? 'That API key is not valid.' : `Could not sign in: ${describe(err)}`);
      input.select();
      input.focus();
    } finally {
      button.removeAttribute('disabled');
    }
  });
  replace(
    main,
    h(
      'section',
      { class: 'signin', 'aria-labelledby': 'signin-title' },
      h('div', { class: 'signin-brand' }, h('img', { src: 'favicon.svg', alt: '', width: 40, height: 40 }), h('span', null, 'callback-reconciler')),
      h('h1', { id: 'signin-title' }, 'Operator console'),
      h('p', { class: 'muted' }, 'Sign in with an API key to find tasks, read their story and act on them.'),
      form,
    ),
  );
  input.focus();
}

// ---------------------------------------------------------------- overview

/** @param {number} view */
async function overviewView(view) {
  const data = await api('/v1/overview');
  const updated = h('p', { class: 'muted small', id: 'overview-updated' });
  const body = h('div', null);
  const draw = (/** @type {any} */ d) => {
    const totals = d.partners.reduce(
      (/** @type {any} */ t, /** @type {any} */ p) => ({
        open: t.open + p.open.pending + p.open.dispatched,
        expired: t.expired + p.expired,
        conflicts: t.conflicts + p.conflicts24h,
        breakers: t.breakers + (p.breaker === 'closed' ? 0 : 1),
        oldest: Math.max(t.oldest, p.oldestOpenTaskAgeSeconds ?? 0),
      }),
      { open: 0, expired: 0, conflicts: 0, breakers: 0, oldest: 0 },
    );
    replace(
      body,
      h(
        'ul',
        { class: 'tiles', 'aria-label': 'Totals' },
        tile('Open tasks', totals.open, totals.open ? 'info' : 'plain'),
        tile('Oldest open task', totals.open ? age(totals.oldest) : '—', 'plain'),
        tile('Expired, need attention', totals.expired, totals.expired ? 'warn' : 'plain'),
        tile('Conflicts (24 h)', totals.conflicts, totals.conflicts ? 'bad' : 'plain'),
        tile('Breakers open', totals.breakers, totals.breakers ? 'bad' : 'ok'),
      ),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table overview-table' },
          h('caption', { class: 'visually-hidden' }, 'Partners'),
          h('thead', null, h('tr', null, ...['Partner', 'Pending', 'Dispatched', 'Expired', 'Oldest open', 'Conflicts (24 h)', 'Breaker'].map((c, i) => h('th', { scope: 'col', class: i > 0 && i < 6 ? 'num' : null }, c)))),
          h(
            'tbody',
            null,
            d.partners.length === 0 ? h('tr', null, h('td', { colspan: 7, class: 'muted' }, 'No partners configured.')) : null,
            ...d.partners.map((/** @type {any} */ p) =>
              h(
                'tr',
                null,
                h('th', { scope: 'row', 'data-label': 'Partner' }, h('a', { href: `#/tasks?partner=${encodeURIComponent(p.id)}` }, p.id), p.configured ? null : h('span', { class: 'badge badge-warn' }, 'not configured')),
                countCell('Pending', p.open.pending, `#/tasks?partner=${encodeURIComponent(p.id)}&status=pending`),
                countCell('Dispatched', p.open.dispatched, `#/tasks?partner=${encodeURIComponent(p.id)}&status=dispatched`),
                countCell('Expired', p.expired, `#/tasks?partner=${encodeURIComponent(p.id)}&status=expired`, p.expired ? 'warn' : ''),
                h('td', { 'data-label': 'Oldest open', class: 'num' }, age(p.oldestOpenTaskAgeSeconds)),
                h('td', { 'data-label': 'Conflicts (24 h)', class: ['num', p.conflicts24h ? 'tone-bad' : ''] }, String(p.conflicts24h)),
                h('td', { 'data-label': 'Breaker' }, h('span', { class: `badge badge-breaker-${p.breaker}` }, p.breaker)),
              ),
            ),
          ),
        ),
      ),
      h('p', { class: 'muted small' }, 'Breaker state is this replica’s view. Counts come from the database and are shared by every replica.'),
    );
    replace(updated, `Refreshed every ${OVERVIEW_REFRESH_MS / 1000} s · updated ${dateTime(d.generatedAt)}`);
  };
  draw(data);
  if (!show(view, 'Overview', h('div', { class: 'page-head' }, h('h1', null, 'Overview'), updated), body)) return;
  state.timer = window.setInterval(async () => {
    if (document.hidden || view !== state.view) return;
    try {
      draw(await api('/v1/overview'));
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) signedOut('Your API key is no longer accepted. Sign in again.');
      else replace(updated, `Could not refresh: ${describe(err)}`);
    }
  }, OVERVIEW_REFRESH_MS);
}

/** @param {string} label @param {string|number} value @param {string} tone */
function tile(label, value, tone) {
  return h('li', { class: `tile tone-${tone}` }, h('span', { class: 'tile-value' }, String(value)), h('span', { class: 'tile-label' }, label));
}

/** @param {string} label @param {number} n @param {string} href @param {string} [tone] */
function countCell(label, n, href, tone = '') {
  return h('td', { 'data-label': label, class: ['num', tone ? `tone-${tone}` : ''] }, n ? h('a', { href, 'aria-label': `${n} ${label.toLowerCase()}` }, String(n)) : '0');
}

// ---------------------------------------------------------------- task list

/** @returns {Promise<string[]>} the configured partner ids, read once per sign-in */
async function partners() {
  const ids = state.partners ?? (await api('/v1/partners')).items.map((/** @type {any} */ p) => p.id);
  state.partners = ids;
  return ids;
}

/** @param {URLSearchParams} query @param {number} view */
async function tasksView(query, view) {
  const status = query.get('status') || '';
  const partner = query.get('partner') || '';
  const cursor = query.get('cursor') || '';
  const limit = Math.min(500, Math.max(1, Number(query.get('limit')) || PAGE_SIZE));
  const filterKey = `${status}|${partner}|${limit}`;
  const stack = state.pages.get(filterKey) || [];
  if (!cursor) stack.length = 0;
  state.pages.set(filterKey, stack);

  const params = new URLSearchParams({ limit: String(limit) });
  if (status) params.set('status', status);
  if (partner) params.set('partner', partner);
  if (cursor) params.set('cursor', cursor);
  const [page, partnerIds] = await Promise.all([api(`/v1/tasks?${params}`), partners()]);

  const listHash = (/** @type {Record<string,string>} */ over) => {
    const q = new URLSearchParams();
    /** @type {Record<string, string>} */
    const merged = { status, partner, ...over };
    if (merged.status) q.set('status', merged.status);
    if (merged.partner) q.set('partner', merged.partner);
    if (limit !== PAGE_SIZE) q.set('limit', String(limit));
    if (merged.cursor) q.set('cursor', merged.cursor);
    const s = q.toString();
    return `#/tasks${s ? `?${s}` : ''}`;
  };
  const statusSelect = h(
    'select',
    { id: 'filter-status', name: 'status', onchange: (/** @type {Event} */ e) => go(listHash({ status: /** @type {HTMLSelectElement} */ (e.target).value, cursor: '' })) },
    h('option', { value: '' }, 'All statuses'),
    ...STATUSES.map((s) => h('option', { value: s, selected: s === status }, s)),
  );
  const partnerSelect = h(
    'select',
    { id: 'filter-partner', name: 'partner', onchange: (/** @type {Event} */ e) => go(listHash({ partner: /** @type {HTMLSelectElement} */ (e.target).value, cursor: '' })) },
    h('option', { value: '' }, 'All partners'),
    ...partnerIds.map((p) => h('option', { value: p, selected: p === partner }, p)),
  );
  const pageNo = stack.length + 1;
  const prev = h('button', {
    type: 'button',
    class: 'btn',
    disabled: !cursor,
    onclick: () => {
      const previous = stack.pop();
      go(listHash({ cursor: previous || '' }));
    },
  }, '← Newer');
  const next = h('button', {
    type: 'button',
    class: 'btn',
    disabled: !page.nextCursor,
    onclick: () => {
      stack.push(cursor);
      go(listHash({ cursor: page.nextCursor }));
    },
  }, 'Older →');

  show(
    view,
    'Tasks',
    h('div', { class: 'page-head' }, h('h1', null, 'Tasks'), h('p', { class: 'muted small' }, 'Newest first.')),
    h(
      'div',
      { class: 'filters', role: 'group', 'aria-label': 'Filters' },
      h('div', { class: 'field' }, h('label', { for: 'filter-status' }, 'Status'), statusSelect),
      h('div', { class: 'field' }, h('label', { for: 'filter-partner' }, 'Partner'), partnerSelect),
    ),
    taskTable(page.items, status || partner ? 'No tasks match these filters.' : 'No tasks yet.'),
    h('nav', { class: 'pager', 'aria-label': 'Pages' }, prev, h('span', { class: 'muted small', 'aria-live': 'polite' }, `Page ${pageNo} · ${page.items.length} ${page.items.length === 1 ? 'task' : 'tasks'}`), next),
  );
}

/** @param {any[]} items @param {string} empty */
function taskTable(items, empty) {
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'table task-table' },
      h('caption', { class: 'visually-hidden' }, 'Tasks'),
      h('thead', null, h('tr', null, ...['Request number', 'Partner', 'Kind', 'Status', 'Created', 'Attempts'].map((c) => h('th', { scope: 'col', class: c === 'Attempts' ? 'num' : null }, c)))),
      h(
        'tbody',
        null,
        items.length === 0 ? h('tr', null, h('td', { colspan: 6, class: 'muted empty' }, empty)) : null,
        ...items.map((t) =>
          h(
            'tr',
            null,
            h('th', { scope: 'row', 'data-label': 'Request number' }, h('a', { href: `#/task/${t.id}`, class: 'mono' }, t.requestNo)),
            h('td', { 'data-label': 'Partner' }, t.partner),
            h('td', { 'data-label': 'Kind' }, t.kind || h('span', { class: 'muted' }, '—')),
            h('td', { 'data-label': 'Status' }, statusBadge(t.status), t.settledBy ? h('span', { class: 'muted small' }, ` by ${t.settledBy}`) : null),
            h('td', { 'data-label': 'Created' }, timeAgo(t.createdAt)),
            h('td', { 'data-label': 'Attempts', class: 'num' }, `${t.dispatchAttempts} dispatch · ${t.checkAttempts} check`),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------- search

/** @param {string} q @param {number} view */
async function findView(q, view) {
  searchInput.value = q;
  const lookups = [];
  if (UUID.test(q)) lookups.push(api(`/v1/tasks/${encodeURIComponent(q)}`).then((t) => [t], (err) => (err instanceof ApiError && err.status === 404 ? [] : Promise.reject(err))));
  // A generated request number is a UUID too, so both lookups run for one.
  if (REQUEST_NO.test(q)) lookups.push(api(`/v1/tasks?requestNo=${encodeURIComponent(q)}&limit=100`).then((p) => p.items));
  const found = (await Promise.all(lookups)).flat();
  const unique = [...new Map(found.map((t) => [t.id, t])).values()];
  if (unique.length === 1 && view === state.view) {
    location.replace(`#/task/${unique[0].id}`);
    return;
  }
  show(
    view,
    `Find ${q}`,
    h('div', { class: 'page-head' }, h('h1', null, 'Search results'), h('p', { class: 'muted small' }, unique.length ? `${unique.length} tasks match “${q}” (one per partner).` : '')),
    unique.length
      ? taskTable(unique, '')
      : h('div', { class: 'panel', role: 'status' }, h('p', null, `No task has the id or request number “${q}”.`), h('p', { class: 'muted small' }, 'Request numbers are matched exactly, across every configured partner.')),
  );
}

// ---------------------------------------------------------------- a task's story

/** @param {string} id */
async function loadStory(id) {
  const [task, events, attempts, callbacks, notifications] = await Promise.all([
    api(`/v1/tasks/${encodeURIComponent(id)}`),
    fetchAll(`/v1/tasks/${encodeURIComponent(id)}/events`),
    fetchAll(`/v1/tasks/${encodeURIComponent(id)}/attempts`),
    fetchAll(`/v1/tasks/${encodeURIComponent(id)}/callbacks`),
    // Notifications exist only on services that send them; a 404 there means "none to show".
    api(`/v1/tasks/${encodeURIComponent(id)}/notifications`).then(
      (r) => ({ items: r.items || [], available: true }),
      (err) => (err instanceof ApiError && (err.status === 404 || err.status === 405) ? { items: [], available: false } : Promise.reject(err)),
    ),
  ]);
  return { task, events: events.items, attempts: attempts.items, callbacks: callbacks.items, notifications: notifications.items, truncated: events.truncated || attempts.truncated || callbacks.truncated };
}

/** @param {string} id @param {number} view */
async function taskView(id, view) {
  const story = await loadStory(id);
  const { task } = story;
  const outcome = h('p', { class: 'outcome', id: 'action-outcome', role: 'status', 'aria-live': 'polite' });
  const timeline = h('section', { class: 'timeline-section', 'aria-labelledby': 'timeline-title' });
  const fields = h('section', { class: 'panel fields-panel', 'aria-labelledby': 'fields-title' });
  const head = h('div', { class: 'task-head' });

  const redraw = (/** @type {any} */ s) => {
    replace(head, taskHead(s.task, outcome, () => reconcileNow(s)));
    replace(fields, ...taskFields(s.task));
    replace(timeline, ...timelineSection(s, (/** @type {any} */ n) => redeliver(s, n)));
  };

  async function reconcileNow(/** @type {any} */ s) {
    const ok = await confirmAction('Reconcile now?', `Ask partner “${s.task.partner}” about ${s.task.requestNo} now. The request is recorded in the task’s events under your key’s label.`, 'Reconcile now');
    if (!ok) return;
    const baseline = s.attempts.length ? s.attempts[s.attempts.length - 1].at : '';
    replace(outcome, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Asking the partner…');
    try {
      await api(`/v1/tasks/${encodeURIComponent(s.task.id)}/reconcile`, { method: 'POST' });
    } catch (err) {
      replace(outcome, h('span', { class: 'tone-bad' }, `Could not start the check: ${describe(err)}`));
      return;
    }
    const deadline = Date.now() + OUTCOME_WAIT_MS;
    while (view === state.view) {
      const fresh = await loadStory(s.task.id);
      const call = fresh.attempts.find((/** @type {any} */ c) => c.at > baseline);
      if (call || fresh.task.status !== s.task.status) {
        redraw(fresh);
        replace(outcome, h('strong', null, 'Outcome: '), describeOutcome(call, fresh.task));
        return;
      }
      if (Date.now() > deadline) {
        redraw(fresh);
        replace(outcome, 'The check is queued but no answer has come yet (another worker may hold the task). The timeline will show it.');
        return;
      }
      await new Promise((r) => setTimeout(r, 600));
    }
  }

  async function redeliver(/** @type {any} */ s, /** @type {any} */ n) {
    const ok = await confirmAction('Redeliver this notification?', `Send ${n.type} to the client’s notify URL again now, with the same webhook-id. The request is recorded in the task’s events.`, 'Redeliver');
    if (!ok) return;
    replace(outcome, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Redelivering…');
    try {
      await api(`/v1/tasks/${encodeURIComponent(s.task.id)}/notifications/${encodeURIComponent(n.id)}/redeliver`, { method: 'POST' });
    } catch (err) {
      replace(outcome, h('span', { class: 'tone-bad' }, `Could not redeliver: ${describe(err)}`));
      return;
    }
    const deadline = Date.now() + OUTCOME_WAIT_MS;
    while (view === state.view) {
      const fresh = await loadStory(s.task.id);
      const now = fresh.notifications.find((/** @type {any} */ x) => x.id === n.id);
      if (now && (now.attempts > n.attempts || Date.now() > deadline)) {
        redraw(fresh);
        replace(outcome, h('strong', null, 'Outcome: '), now.attempts > n.attempts ? `notification ${now.status}${now.lastStatusCode ? ` (HTTP ${now.lastStatusCode})` : ''}` : 'queued; no attempt yet');
        return;
      }
      await new Promise((r) => setTimeout(r, 600));
    }
  }

  redraw(story);
  show(
    view,
    `${task.requestNo} (${task.partner})`,
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/tasks' }, 'Tasks'), h('span', { 'aria-hidden': 'true' }, ' / '), h('span', { 'aria-current': 'page' }, task.requestNo)),
    head,
    h('div', { class: 'story' }, fields, timeline),
  );
}

/** @param {any} call @param {any} task */
function describeOutcome(call, task) {
  const parts = [];
  if (call && call.operation === 'status') {
    parts.push(call.outcome === 'found' ? `the partner says ${call.reportedStatus}` : call.outcome === 'not_found' ? 'the partner does not know the request' : `the status query failed (${call.errorClass || 'error'})`);
  } else if (call) {
    parts.push(`dispatched again: ${call.outcome}`);
  }
  parts.push(`the task is ${task.status}`);
  if (task.nextCheckAt && OPEN.includes(task.status)) parts.push(`next check ${dateTime(task.nextCheckAt)}`);
  const text = parts.join('; ');
  return text.charAt(0).toUpperCase() + text.slice(1) + '.';
}

/** @param {any} task @param {HTMLElement} outcome @param {() => void} onReconcile */
function taskHead(task, outcome, onReconcile) {
  const open = OPEN.includes(task.status);
  return [
    h('div', { class: 'task-title' }, h('h1', null, h('span', { class: 'mono' }, task.requestNo)), statusBadge(task.status)),
    h('p', { class: 'muted' }, `${task.partner}${task.kind ? ` · ${task.kind}` : ''} · created ${dateTime(task.createdAt)}`),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'button', class: 'btn btn-primary', id: 'reconcile-now', onclick: onReconcile, disabled: !open, 'aria-describedby': open ? null : 'reconcile-why' }, 'Reconcile now'),
      open ? null : h('span', { class: 'muted small', id: 'reconcile-why' }, `Nothing to check: the task is ${task.status}.`),
    ),
    outcome,
  ];
}

/** @param {any} t */
function taskFields(t) {
  /** @type {[string, any][]} */
  const rows = [
    ['Status', [statusBadge(t.status), t.settledBy ? ` settled by ${t.settledBy}` : '']],
    ['Partner', t.partner],
    ['Request number', h('span', { class: 'mono' }, t.requestNo)],
    ['Kind', t.kind || '—'],
    ['Task id', h('span', { class: 'mono' }, t.id)],
    ['Dispatch attempts', String(t.dispatchAttempts)],
    ['Status checks', String(t.checkAttempts)],
    ['Created', when(t.createdAt)],
    ['Dispatched', when(t.dispatchedAt)],
    ['Completed', when(t.completedAt)],
    ['Updated', when(t.updatedAt)],
    ['Next check', when(t.nextCheckAt)],
    ['Notify URL', t.notifyUrl ? h('span', { class: 'mono break' }, t.notifyUrl) : '—'],
  ];
  const blobs = /** @type {[string, unknown][]} */ ([
    ['Payload', t.payload],
    ['Result', t.result],
    ['Error', t.error],
    ['Metadata', t.metadata],
  ]).filter(([, v]) => v !== null && v !== undefined);
  return [
    h('h2', { id: 'fields-title' }, 'Fields'),
    h('dl', { class: 'fields' }, ...rows.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)])),
    ...blobs.map(([k, v], i) => h('details', { class: 'blob', open: k === 'Error' || (k === 'Result' && i < 3) }, h('summary', null, k), h('pre', { tabindex: 0 }, json(v)))),
  ];
}

/** A time in the fields: exact UTC, kept on one line. @param {string | null} iso */
function when(iso) {
  return iso ? h('time', { datetime: iso, class: 'nowrap' }, dateTime(iso)) : '—';
}

/** @param {any} s @param {(n: any) => void} onRedeliver */
function timelineSection(s, onRedeliver) {
  const entries = buildTimeline(s);
  return [
    h('div', { class: 'section-head' }, h('h2', { id: 'timeline-title' }, 'Timeline'), h('span', { class: 'muted small' }, `${entries.length} entries, oldest first`)),
    s.truncated ? h('p', { class: 'panel warn' }, 'This task has a very long history; the first entries of each record are shown.') : null,
    h(
      'ol',
      { class: 'timeline' },
      ...entries.map((e) =>
        h(
          'li',
          { class: `entry kind-${e.kind} dot-${e.tone}`, 'data-kind': e.kind },
          h('div', { class: 'entry-time' }, h('time', { datetime: e.at, title: dateTime(e.at) }, clockTime(e.at))),
          h(
            'div',
            { class: 'entry-body' },
            h('div', { class: 'entry-title' }, h('span', { class: `chip chip-${e.kind}` }, KIND_LABEL[e.kind]), h('span', null, e.title)),
            e.meta.length ? h('p', { class: 'entry-meta' }, e.meta.join(' · ')) : null,
            e.body ? h('pre', { class: 'entry-pre', tabindex: 0 }, e.body) : null,
            e.notification
              ? h('button', { type: 'button', class: 'btn btn-small', onclick: () => onRedeliver(e.notification), 'aria-label': `Redeliver notification ${e.notification.type}` }, 'Redeliver')
              : null,
          ),
        ),
      ),
    ),
  ];
}

// ---------------------------------------------------------------- confirmation

/** @param {string} title @param {string} text @param {string} okLabel @returns {Promise<boolean>} */
function confirmAction(title, text, okLabel) {
  replace(/** @type {HTMLElement} */ (document.getElementById('confirm-title')), title);
  replace(/** @type {HTMLElement} */ (document.getElementById('confirm-text')), text);
  replace(/** @type {HTMLElement} */ (document.getElementById('confirm-ok')), okLabel);
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    /** @type {HTMLElement} */ (document.getElementById('confirm-cancel')).focus();
  });
}

void start();
