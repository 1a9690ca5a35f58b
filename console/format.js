// Formatting shared by the views: times in UTC (operators compare them with logs), ages, badges.
import { h } from './dom.js';

/** @param {string | null | undefined} iso */
export function dateTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 19)} UTC`;
}

/** Clock time with milliseconds: timeline entries are often milliseconds apart. @param {string} iso */
export function clockTime(iso) {
  return new Date(iso).toISOString().slice(11, 23);
}

/** @param {number | null | undefined} seconds */
export function age(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ''}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** @param {string | null | undefined} iso */
export function ago(iso) {
  if (!iso) return '—';
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  return seconds < 0 ? `in ${age(-seconds)}` : `${age(seconds)} ago`;
}

/** A <time> showing a relative age, the exact UTC time on hover. @param {string | null | undefined} iso */
export function timeAgo(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: iso, title: dateTime(iso) }, ago(iso));
}

/** @param {string} status */
export function statusBadge(status) {
  return h('span', { class: `badge badge-${status}` }, status);
}

/** @param {unknown} value */
export function json(value) {
  return JSON.stringify(value, null, 2);
}
