// @ts-check
/**
 * The embedded viewer (an iframe in a patient portal's page).
 *
 * 1. Takes the launch token from the address's fragment and removes it at once
 *    (no token in history, logs or Referer), then trades it for an embed session.
 * 2. Keeps that session in memory and sends it as a header on every request, so the
 *    viewer works where the browser refuses third-party cookies.
 * 3. Talks to the portal with postMessage: events go only to the portal's registered
 *    origins; commands are accepted only from the parent window on one of them.
 */
import { ApiError, request, useSession } from './api.js';
import {
  configure, current, loadStudy, openSeriesByUid, resetView, setSlice, setWindow,
} from './studyviewer.js';
import { initShare } from './share.js';

/**
 * @typedef {{study_uid: string, description: string, study_date: string, modalities: string,
 *            url: string}} Study
 * @typedef {{session: string, csrf_token: string, display_name: string, studies: Study[]}} Launch
 */

const PROTOCOL = 'dicom-viewer';
const body = document.body;
/** @type {string[]} */
const origins = JSON.parse(body.dataset.origins || '[]');

/** @param {string} id */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el;
}

const bar = $('embed-bar');
const studySelect = /** @type {HTMLSelectElement} */ ($('embed-study-select'));
const title = $('embed-title');
const tabs = { images: $('tab-images'), report: $('tab-report') };
const panels = { images: $('panel-images'), report: $('panel-report') };
const reportContent = $('report-content');

/** @type {Study[]} */
let studies = [];
/** @type {Study | null} */
let shown = null;
let ended = false;
/** The report of `shown` has been fetched (it is fetched when its tab is first opened). */
let reportLoaded = false;

/**
 * Tell the portal. targetOrigin makes the browser deliver it only if the parent is on
 * that origin, so posting to each registered origin reaches the right one and no other.
 * @param {string} type
 * @param {Record<string, unknown>} [detail]
 */
function emit(type, detail = {}) {
  if (window.parent === window) return;
  for (const origin of origins) {
    window.parent.postMessage({ source: PROTOCOL, type, ...detail }, origin);
  }
}

/**
 * Replace the viewer with a message (launch refused, session over).
 * @param {string} heading
 * @param {string} text
 */
function showMessage(heading, text) {
  ended = true;
  bar.hidden = true;
  panels.images.hidden = true;
  panels.report.hidden = true;
  $('embed-message-title').textContent = heading;
  $('embed-message-text').textContent = text;
  $('embed-message').hidden = false;
}

/** @param {ApiError} err */
function sessionEnded(err) {
  if (ended) return;
  showMessage('Your viewing session has ended', err.message);
  emit('sessionExpired', { message: err.message });
}

/* ------------------------------------------------------------- tabs */

/** @param {'images' | 'report'} name */
function selectTab(name) {
  for (const key of /** @type {const} */ (['images', 'report'])) {
    const on = key === name;
    tabs[key].setAttribute('aria-selected', String(on));
    tabs[key].tabIndex = on ? 0 : -1;
    panels[key].hidden = !on;
  }
  if (name === 'report' && !reportLoaded) showReport();
  if (name === 'images') window.dispatchEvent(new Event('resize'));
}

tabs.images.addEventListener('click', () => selectTab('images'));
tabs.report.addEventListener('click', () => selectTab('report'));
for (const tab of Object.values(tabs)) {
  tab.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    const next = tab === tabs.images ? 'report' : 'images';
    selectTab(next);
    tabs[next].focus();
  });
}

/* ------------------------------------------------------------- report */

/**
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

const STATUS = { pending: 'Not available yet', preliminary: 'Preliminary', final: 'Final', amended: 'Amended' };

/**
 * A button that opens a PDF of the report: fetched with the session header, shown from a blob.
 * @param {string} url
 * @param {string} label
 */
function pdfButton(url, label) {
  const b = /** @type {HTMLButtonElement} */ (el('button', 'button', label));
  b.type = 'button';
  b.addEventListener('click', async () => {
    const tab = window.open('', '_blank');
    try {
      const response = await request(url, { headers: { Accept: 'application/pdf' } });
      const href = URL.createObjectURL(await response.blob());
      if (tab) tab.location.href = href;
      else window.location.assign(href);
      setTimeout(() => URL.revokeObjectURL(href), 60_000);
    } catch (err) {
      tab?.close();
      alert(`The report could not be opened: ${/** @type {Error} */ (err).message}`);
    }
  });
  return b;
}

/** @param {any} report the answer of GET /api/studies/<uid>/report */
function renderReport(report) {
  const parts = [];
  const head = el('div', 'report-summary');
  head.append(el('h2', 'report-heading', 'Report'));
  const status = report.status === 'pending' && report.hold ? 'On hold' : (STATUS[report.status] || report.status);
  head.append(el('span', `report-status report-status-${report.status}`, status));
  if (report.timeline?.length) {
    head.append(el('span', 'report-timeline', report.timeline.map((/** @type {any} */ s) => s.text).join(' · ')));
  }
  parts.push(head);
  const inner = el('div', 'report-body');
  if (report.status === 'pending') {
    inner.append(el('p', report.hold ? 'report-hold' : 'muted', report.hold
      ? `${report.hold.text}.`
      : 'Your report will appear here as soon as it is ready. The images are already available.'));
  } else {
    if (report.text) inner.append(el('div', 'report-text', report.text));
    const byline = [report.radiologist, report.signed_text].filter(Boolean).join(' · ');
    if (byline) inner.append(el('p', 'report-byline muted small', byline));
    if (report.has_pdf && report.pdf_url) inner.append(pdfButton(report.pdf_url, 'Open the report (PDF)'));
    for (const addendum of report.addenda || []) {
      const section = el('section', 'report-addendum');
      section.setAttribute('aria-label', 'Addendum');
      section.append(el('h3', 'report-addendum-title', 'Addendum'));
      if (addendum.text) section.append(el('div', 'report-text', addendum.text));
      if (addendum.has_pdf && addendum.pdf_url) section.append(pdfButton(addendum.pdf_url, 'Open the addendum (PDF)'));
      const by = [addendum.radiologist, addendum.signed_text].filter(Boolean).join(' · ');
      if (by) section.append(el('p', 'report-byline muted small', by));
      inner.append(section);
    }
  }
  parts.push(inner);
  reportContent.replaceChildren(...parts);
}

async function showReport() {
  const study = shown;
  if (!study) return;
  reportLoaded = true;
  reportContent.replaceChildren(el('p', 'muted', 'Loading the report…'));
  try {
    const response = await request(`/api/studies/${encodeURIComponent(study.study_uid)}/report`,
      { headers: { Accept: 'application/json' } });
    const report = await response.json();
    if (shown === study) renderReport(report);
  } catch (err) {
    reportLoaded = false;
    if (shown === study) {
      reportContent.replaceChildren(el('p', 'form-error', `The report could not be loaded: ${/** @type {Error} */ (err).message}`));
    }
  }
}

/* ------------------------------------------------------------- studies */

/** @param {Study} study */
function studyLabel(study) {
  const date = study.study_date ? ` · ${study.study_date}` : '';
  return `${study.description || 'Imaging study'}${date}`;
}

/**
 * @param {string} uid
 * @returns {Promise<boolean>} false when this session was not launched for that study
 */
async function openStudy(uid) {
  const study = studies.find((s) => s.study_uid === uid);
  if (!study) return false;
  shown = study;
  reportLoaded = false;
  studySelect.value = uid;
  title.textContent = studyLabel(study);
  document.title = `${study.description || 'Images'} · Viewer`;
  if (!panels.report.hidden) showReport();
  await loadStudy(`/api/studies/${encodeURIComponent(uid)}`);
  return true;
}

studySelect.addEventListener('change', () => openStudy(studySelect.value));

/* ------------------------------------------------------------- commands */

/**
 * @param {any} data
 * @returns {Promise<string | null>} why the command was not carried out, or null
 */
async function runCommand(data) {
  switch (data.type) {
    case 'openStudy':
      return (await openStudy(String(data.studyInstanceUID || ''))) ? null
        : 'openStudy: this viewer was not opened for that study';
    case 'openSeries':
      return openSeriesByUid(String(data.seriesInstanceUID || '')) ? null
        : 'openSeries: no such series in the open study';
    case 'setSlice':
      return setSlice(Number(data.index)) ? null
        : 'setSlice: index must be a whole number from 0 to the number of slices - 1';
    case 'setWindow':
      return setWindow(Number(data.center), Number(data.width)) ? null
        : 'setWindow: center and width (> 0) must be numbers, for a grey-scale series';
    case 'resetView':
      resetView();
      return null;
    default:
      return `unknown command: ${String(data.type).slice(0, 40)}`;
  }
}

window.addEventListener('message', async (event) => {
  // Only the parent, only from a registered origin, only our protocol: anything else is ignored.
  if (event.source !== window.parent || window.parent === window) return;
  if (!origins.includes(event.origin)) return;
  const data = event.data;
  if (!data || typeof data !== 'object' || data.source !== PROTOCOL || typeof data.type !== 'string') return;
  if (ended || !studies.length) {
    emit('error', { message: 'the viewer is not ready for commands', command: data.type });
    return;
  }
  const problem = await runCommand(data);
  if (problem) emit('error', { message: problem, command: data.type });
});

/* ------------------------------------------------------------- launch */

/** @returns {Promise<Launch | null>} */
async function exchange() {
  const token = location.hash.slice(1);
  // Drop the token from the address before anything else can see it.
  history.replaceState(null, '', location.pathname);
  if (!token) {
    showMessage('These images cannot be shown', 'This page opens only from your patient portal.');
    emit('error', { message: 'no launch token in the address' });
    return null;
  }
  try {
    const response = await request(body.dataset.sessionUrl || '', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ token: decodeURIComponent(token), portal: Number(body.dataset.portal) }),
    });
    return await response.json();
  } catch (err) {
    const message = /** @type {Error} */ (err).message;
    showMessage('These images cannot be shown', message);
    emit('error', { message, status: err instanceof ApiError ? err.status : 0 });
    return null;
  }
}

async function start() {
  configure({ trackHash: false, onEvent: (type, detail) => emit(type, detail) });
  initShare(current);
  const launch = await exchange();
  if (!launch) return;
  useSession(launch.session, launch.csrf_token, sessionEnded);
  studies = launch.studies || [];
  if (!studies.length) {
    showMessage('No images to show', 'There are no released images for this request yet.');
    emit('error', { message: 'no studies to show' });
    return;
  }
  studySelect.replaceChildren(...studies.map((s) => new Option(studyLabel(s), s.study_uid)));
  studySelect.hidden = studies.length < 2;
  title.hidden = studies.length > 1;
  bar.hidden = false;
  emit('ready', {
    studies: studies.map((s) => ({ studyInstanceUID: s.study_uid, description: s.description, date: s.study_date })),
  });
  await openStudy(studies[0].study_uid);
}

start();
