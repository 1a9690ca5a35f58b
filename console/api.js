// The console's only door to the service: the public JSON API with a Bearer key.
// The key lives in sessionStorage (gone when the tab closes), is sent only in the Authorization header,
// and never goes into a URL, the page, or a log line.

const KEY_STORAGE = 'callback-reconciler.apiKey';

export class ApiError extends Error {
  /** @param {number} status @param {any} problem */
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** @param {string} key */
export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

/**
 * Calls the API. Answers other than 2xx throw an ApiError carrying the problem+json body.
 * @param {string} path
 * @param {{ method?: string, key?: string | null }} [opts]
 */
export async function api(path, opts = {}) {
  const key = opts.key === undefined ? storedKey() : opts.key;
  /** @type {Record<string, string>} */
  const headers = { accept: 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  const res = await fetch(path, { method: opts.method || 'GET', headers, cache: 'no-store', credentials: 'omit' });
  const type = res.headers.get('content-type') || '';
  const body = type.includes('json') ? await res.json().catch(() => null) : null;
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

/**
 * Follows `nextCursor` until the list ends (or `maxItems`), for the timeline's sources.
 * @param {string} path
 * @param {number} [maxItems]
 */
export async function fetchAll(path, maxItems = 5000) {
  const items = [];
  let cursor = null;
  let truncated = false;
  for (;;) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...(page.items || []));
    cursor = page.nextCursor || null;
    if (!cursor) break;
    if (items.length >= maxItems) {
      truncated = true;
      break;
    }
  }
  return { items, truncated };
}
