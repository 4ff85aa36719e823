// @ts-check
/**
 * The study viewer on a page (the study page, or the embedded viewer): loads a
 * study, builds the series strip, and wires the toolbar, overlay and input
 * handlers to the viewport. It reports what the person does through `onEvent`
 * and can be driven from code (the embedding portal's commands).
 */
import { fetchJSON, fetchObjectURL, hasSessionHeader, isAbort } from './api.js';
import { Viewport } from './viewport.js';
import { Cine, bindKeyboard, bindPointer } from './controls.js';

/**
 * @typedef {import('./viewport.js').Stack} Stack
 * @typedef {import('./viewport.js').Preset} Preset
 * @typedef {import('./controls.js').Tool} Tool
 * @typedef {{series_uid: string, number: number | null, description: string, modality: string,
 *            instance_count: number, image_count: number, thumbnail_url: string,
 *            url: string}} SeriesSummary
 * @typedef {{series_uid: string, study_uid: string, number: number | null, description: string,
 *            modality: string, stacks: Stack[]}} SeriesDetail
 * @typedef {{study_uid: string, description: string}} StudySummary
 * @typedef {(type: string, detail: Record<string, unknown>) => void} EventSink
 */

/** @param {string} id */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el;
}

/**
 * @param {HTMLElement} el
 * @param {string} text
 */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** @param {number} v */
function fmt(v) {
  return Math.abs(v) >= 10 ? String(Math.round(v)) : String(Math.round(v * 100) / 100);
}

/** @param {SeriesSummary | SeriesDetail} s */
function seriesTitle(s) {
  const desc = s.description || s.modality || 'Series';
  return s.number != null ? `${desc}` : desc;
}

const viewportEl = $('viewport');
const canvas = /** @type {HTMLCanvasElement} */ ($('viewport-canvas'));
const seriesList = $('series-list');
const slider = /** @type {HTMLInputElement} */ ($('slice-slider'));
const sliceOutput = $('slice-output');
const presetSelect = /** @type {HTMLSelectElement} */ ($('wl-preset'));
const invertButton = $('invert-button');
const playButton = $('play-button');
const fpsSelect = /** @type {HTMLSelectElement} */ ($('fps-select'));
const stackGroup = $('stack-group');
const stackSelect = /** @type {HTMLSelectElement} */ ($('stack-select'));
const helpDialog = /** @type {HTMLDialogElement} */ ($('help-dialog'));
const ov = {
  series: $('ov-series'), slice: $('ov-slice'), position: $('ov-position'),
  window: $('ov-window'), zoom: $('ov-zoom'), progress: $('ov-progress'),
};

/** @type {SeriesDetail | null} */
let series = null;
/** @type {Tool} */
let tool = 'scroll';
/** @type {AbortController | null} */
let seriesCtrl = null;
/** @type {SeriesSummary[]} */
let seriesSummaries = [];
/** @type {StudySummary | null} */
let study = null;
/** Counts loadStudy calls, so an older study's answer arriving late is dropped. */
let studyGeneration = 0;
/** Whether the address keeps `#series=<uid>` (the study page; not the embedded viewer). */
let trackHash = true;
/** @type {EventSink} */
let emit = () => {};
/** Last slice reported through `emit` ("<stack id>:<index>"). */
let reported = '';

const vp = new Viewport(viewportEl, canvas, {
  status: $('viewport-status'),
  statusText: $('viewport-status-text'),
  retry: $('viewport-retry'),
  signIn: /** @type {HTMLAnchorElement} */ ($('viewport-signin')),
  busy: $('viewport-busy'),
  onChange: render,
});
const cine = new Cine(vp, (playing) => {
  playButton.setAttribute('aria-pressed', String(playing));
  playButton.setAttribute('aria-label', playing ? 'Pause movie' : 'Play as a movie');
  playButton.classList.toggle('is-playing', playing);
});

/* ------------------------------------------------------------- overlay */

function render() {
  const st = vp.stack;
  const n = vp.count;
  const slice = vp.slice;
  let title = series ? seriesTitle(series) : '';
  if (series && st && series.stacks.length > 1) title += ` · ${st.label}`;
  setText(ov.series, title);
  setText(ov.slice, n ? `Slice ${vp.index + 1} / ${n}` : '');
  const pos = slice && slice.position_mm != null ? `Position ${slice.position_mm.toFixed(1)} mm` : '';
  setText(ov.position, pos);
  const win = vp.windowFor();
  let wtext = '';
  if (st && st.color) wtext = 'Colour image';
  else if (win) wtext = `C ${fmt(win.center)}  W ${fmt(win.width)}`;
  if (st && vp.invert) wtext += wtext ? ' · Inverted' : 'Inverted';
  setText(ov.window, wtext);
  setText(ov.zoom, st ? `Zoom ${Math.round(vp.zoom * 100)}%` : '');
  const { done, total } = vp.progress;
  const loading = total > 0 && done < total && vp.state !== 'error';
  ov.progress.hidden = !loading;
  if (loading) setText(ov.progress, `Loading ${done}/${total}`);

  // Slice slider (1-based for people).
  const max = String(Math.max(1, n));
  if (slider.max !== max) slider.max = max;
  const value = String(vp.index + 1);
  if (slider.value !== value) slider.value = value;
  slider.disabled = n < 2;
  setText(sliceOutput, n ? `${vp.index + 1} / ${n}` : '–');
  slider.setAttribute('aria-valuetext', n ? `Slice ${vp.index + 1} of ${n}${pos ? `, ${pos}` : ''}` : 'No slices');

  // Toolbar state.
  const wl = vp.windowEnabled;
  presetSelect.disabled = !wl;
  const headerOpt = /** @type {HTMLOptionElement} */ (presetSelect.querySelector('option[value="header"]'));
  headerOpt.disabled = !vp.hasHeaderWindow();
  const customOpt = /** @type {HTMLOptionElement} */ (presetSelect.querySelector('option[value="custom"]'));
  customOpt.disabled = !vp.custom;
  if (presetSelect.value !== vp.preset) presetSelect.value = vp.preset;
  invertButton.setAttribute('aria-pressed', String(vp.invert));
  for (const b of document.querySelectorAll('[data-tool="wl"]')) {
    /** @type {HTMLButtonElement} */ (b).disabled = !wl;
  }
  playButton.toggleAttribute('disabled', n < 2);
  if (!wl && st && tool === 'wl') setTool('scroll');
  reportSlice();
}

function reportSlice() {
  const st = vp.stack;
  const key = st && series ? `${series.series_uid}:${st.id}:${vp.index}` : '';
  if (!key || key === reported) return;
  reported = key;
  const slice = vp.slice;
  emit('sliceChanged', {
    studyInstanceUID: series?.study_uid, seriesInstanceUID: series?.series_uid,
    index: vp.index, count: vp.count, sopInstanceUID: slice?.sop_uid, frame: slice?.frame,
    positionMm: slice?.position_mm ?? null,
  });
}

/* ------------------------------------------------------------- series */

/** @param {string} uid */
function markSelected(uid) {
  for (const b of seriesList.querySelectorAll('button[data-series]')) {
    const on = /** @type {HTMLElement} */ (b).dataset.series === uid;
    b.setAttribute('aria-current', on ? 'true' : 'false');
    b.classList.toggle('is-selected', on);
  }
}

/** @param {SeriesSummary[]} list */
function buildStrip(list) {
  seriesList.replaceChildren();
  for (const s of list) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'series-item';
    b.dataset.series = s.series_uid;
    const count = `${s.image_count} image${s.image_count === 1 ? '' : 's'}`;
    b.setAttribute('aria-label', `Series ${s.number ?? ''} ${s.description || ''}, ${count}`.replace(/\s+/g, ' '));
    const thumb = document.createElement('span');
    thumb.className = 'series-thumb';
    const img = document.createElement('img');
    img.alt = '';
    img.decoding = 'async';
    img.loading = 'lazy';
    img.draggable = false;
    img.addEventListener('error', () => {
      img.remove();
      thumb.classList.add('is-missing');
      thumb.textContent = s.modality || '?';
    });
    if (hasSessionHeader()) {
      // The session is a header, which an <img> cannot send: fetch, then show the blob.
      fetchObjectURL(s.thumbnail_url).then((url) => {
        img.addEventListener('load', () => URL.revokeObjectURL(url), { once: true });
        img.src = url;
      }, () => img.dispatchEvent(new Event('error')));
    } else {
      img.src = s.thumbnail_url;
    }
    thumb.append(img);
    const text = document.createElement('span');
    text.className = 'series-text';
    const title = document.createElement('span');
    title.className = 'series-title';
    title.textContent = s.description || s.modality || 'Series';
    const meta = document.createElement('span');
    meta.className = 'series-meta';
    meta.textContent = s.number != null ? `#${s.number} · ${count}` : count;
    text.append(title, meta);
    b.append(thumb, text);
    b.addEventListener('click', () => openSeries(s));
    li.append(b);
    seriesList.append(li);
  }
}

/** @param {SeriesSummary} summary */
async function openSeries(summary) {
  if (series && series.series_uid === summary.series_uid && vp.stack) return;
  cine.pause();
  seriesCtrl?.abort();
  const ctrl = new AbortController();
  seriesCtrl = ctrl;
  markSelected(summary.series_uid);
  series = null;
  stackGroup.hidden = true;
  vp.clear('Loading series…');
  /** @type {SeriesDetail} */
  let detail;
  try {
    detail = await fetchJSON(summary.url, ctrl.signal);
  } catch (err) {
    if (isAbort(err) || vp.signedOut) return;
    vp.fail(`This series could not be loaded: ${/** @type {Error} */ (err).message}`,
      { retry: () => openSeries(summary) });
    return;
  }
  if (seriesCtrl !== ctrl) return;
  series = detail;
  const stacks = detail.stacks || [];
  stackSelect.replaceChildren(...stacks.map((st, i) => new Option(`${st.label} (${st.slices.length})`, String(i))));
  stackGroup.hidden = stacks.length < 2;
  if (!stacks.length) {
    vp.fail('This series has no images that can be shown.');
    return;
  }
  // Start with the largest stack: that is the main volume.
  let best = 0;
  stacks.forEach((st, i) => {
    if (st.slices.length > stacks[best].slices.length) best = i;
  });
  stackSelect.value = String(best);
  vp.setStack(stacks[best]);
  if (trackHash) history.replaceState(null, '', `#series=${encodeURIComponent(detail.series_uid)}`);
  emit('seriesChanged', {
    studyInstanceUID: detail.study_uid, seriesInstanceUID: detail.series_uid,
    description: detail.description, modality: detail.modality, count: vp.count,
  });
  reportSlice();
}

/** @param {string} text */
function placeholder(text) {
  const li = document.createElement('li');
  li.className = 'series-placeholder muted';
  li.textContent = text;
  seriesList.replaceChildren(li);
}

/**
 * Show a study: its series in the strip, and one series in the viewport.
 * @param {string} apiUrl the study's JSON address (/api/studies/<uid>)
 * @param {string} [wantedSeries] series to open first (default: the first one)
 * @returns {Promise<boolean>} whether the study could be shown
 */
export async function loadStudy(apiUrl, wantedSeries = '') {
  const generation = ++studyGeneration;
  cine.pause();
  seriesCtrl?.abort();
  series = null;
  study = null;
  seriesSummaries = [];
  stackGroup.hidden = true;
  placeholder('Loading series…');
  vp.clear('Loading study…');
  /** @type {{study: StudySummary, series: SeriesSummary[]}} */
  let data;
  try {
    data = await fetchJSON(apiUrl);
  } catch (err) {
    if (generation !== studyGeneration) return false;
    const msg = /** @type {Error} */ (err).message;
    placeholder('Could not load the series list.');
    if (vp.signedOut) return false;
    vp.fail(`The study could not be loaded: ${msg}`, { retry: () => loadStudy(apiUrl, wantedSeries) });
    emit('error', { message: `The study could not be loaded: ${msg}` });
    return false;
  }
  if (generation !== studyGeneration) return false;
  study = data.study;
  const list = data.series || [];
  seriesSummaries = list;
  emit('studyOpened', {
    studyInstanceUID: study.study_uid, description: study.description, seriesCount: list.length,
  });
  if (!list.length) {
    placeholder('No series.');
    vp.fail('This study has no images yet.');
    return true;
  }
  buildStrip(list);
  openSeries(list.find((s) => s.series_uid === wantedSeries) || list[0]);
  return true;
}

/**
 * Open one of the shown study's series.
 * @param {string} uid Series Instance UID
 * @returns {boolean} false when the study has no such series
 */
export function openSeriesByUid(uid) {
  const summary = seriesSummaries.find((s) => s.series_uid === uid);
  if (!summary) return false;
  openSeries(summary);
  return true;
}

/**
 * Go to slice `index` (0-based) of the shown series.
 * @param {number} index
 * @returns {boolean} false when no series is shown or the index is outside it
 */
export function setSlice(index) {
  if (!vp.stack || !Number.isInteger(index) || index < 0 || index >= vp.count) return false;
  cine.pause();
  vp.setSlice(index);
  return true;
}

/**
 * Set the window (brightness/contrast) of a grey-scale series.
 * @param {number} center
 * @param {number} width
 * @returns {boolean} false for colour images or when nothing is shown
 */
export function setWindow(center, width) {
  if (!vp.windowEnabled || !Number.isFinite(center) || !Number.isFinite(width) || width <= 0) return false;
  vp.setWindow(center, width);
  return true;
}

/** Back to the fitted image with the series' own window, not inverted. */
export function resetView() {
  cine.pause();
  vp.reset();
}

/** What is on screen now ("Save this image" needs it). */
export function current() {
  return {
    slice: vp.slice,
    window: vp.stack && !vp.stack.color ? vp.windowFor() : null,
    title: series ? seriesTitle(series) : 'image',
    index: vp.index,
  };
}

/**
 * The session has ended (the server answered 401): say so, and offer to sign in again
 * (the page itself, reloaded, leads to the sign-in form and back here), instead of
 * "Try again", which could only fail the same way.
 */
export function sessionEnded() {
  if (vp.signedOut) return;
  cine.pause();
  seriesCtrl?.abort();
  vp.ui.signIn.href = location.pathname + location.search;
  vp.fail('You have been signed out: your session ended after a while without activity, '
    + 'or you signed out in another window.', { signedOut: true });
}

/**
 * @param {{onEvent?: EventSink, trackHash?: boolean}} options where events go, and whether
 *   the address keeps the open series (`#series=<uid>`)
 */
export function configure(options) {
  if (options.onEvent) emit = options.onEvent;
  if (options.trackHash !== undefined) trackHash = options.trackHash;
}

/* ------------------------------------------------------------- controls */

/** @param {Tool} t */
function setTool(t) {
  if (t === 'wl' && !vp.windowEnabled) return;
  tool = t;
  for (const b of document.querySelectorAll('[data-tool]')) {
    b.setAttribute('aria-pressed', String(/** @type {HTMLElement} */ (b).dataset.tool === t));
  }
  viewportEl.dataset.tool = t;
}

function toggleHelp() {
  if (helpDialog.open) helpDialog.close();
  else helpDialog.showModal();
}

/** @type {Record<string, () => void>} */
const actions = {
  prev: () => vp.scrollBy(-1),
  next: () => vp.scrollBy(1),
  prev10: () => vp.scrollBy(-10),
  next10: () => vp.scrollBy(10),
  first: () => vp.setSlice(0),
  last: () => vp.setSlice(vp.count - 1),
  play: () => cine.toggle(),
  'zoom-in': () => vp.zoomBy(1.25),
  'zoom-out': () => vp.zoomBy(0.8),
  fit: () => vp.fit(),
  reset: () => vp.reset(),
  invert: () => vp.toggleInvert(),
  'preset-header': () => vp.hasHeaderWindow() && vp.setPreset('header'),
  'preset-auto': () => vp.setPreset('auto'),
  'preset-full': () => vp.setPreset('full'),
  'tool-scroll': () => setTool('scroll'),
  'tool-wl': () => setTool('wl'),
  'tool-pan': () => setTool('pan'),
  help: toggleHelp,
  'close-help': () => helpDialog.close(),
};

for (const b of document.querySelectorAll('[data-action]')) {
  const name = /** @type {HTMLElement} */ (b).dataset.action || '';
  b.addEventListener('click', () => {
    // Stepping by hand stops the movie; zoom/help do not.
    if (['prev', 'next'].includes(name)) cine.pause();
    actions[name]?.();
  });
}
for (const b of document.querySelectorAll('[data-tool]')) {
  b.addEventListener('click', () => setTool(/** @type {Tool} */ (/** @type {HTMLElement} */ (b).dataset.tool)));
}
invertButton.addEventListener('click', () => vp.toggleInvert());
playButton.addEventListener('click', () => cine.toggle());
fpsSelect.addEventListener('change', () => {
  cine.fps = Number(fpsSelect.value) || 10;
});
cine.fps = Number(fpsSelect.value) || 10;
presetSelect.addEventListener('change', () => vp.setPreset(/** @type {Preset} */ (presetSelect.value)));
slider.addEventListener('input', () => {
  cine.pause();
  vp.setSlice(Number(slider.value) - 1);
});
stackSelect.addEventListener('change', () => {
  const st = series?.stacks[Number(stackSelect.value)];
  if (st) {
    cine.pause();
    vp.setStack(st);
  }
});
helpDialog.addEventListener('click', (e) => {
  // A click on the backdrop closes the dialog.
  if (e.target === helpDialog) helpDialog.close();
});

bindPointer(vp, viewportEl, {
  tool: () => tool,
  onUser: () => {},
  onScroll: () => cine.pause(),
});
bindKeyboard(
  {
    ...actions,
    prev: () => { cine.pause(); vp.scrollBy(-1); },
    next: () => { cine.pause(); vp.scrollBy(1); },
  },
  () => helpDialog.open,
);

setTool('scroll');
render();
