// @ts-check
/**
 * The image viewport: view state (slice, window, zoom/pan, invert), drawing
 * on a <canvas>, and deciding which rendered images to fetch.
 */
import { ImageCache, ImageLoader } from './imagecache.js';
import { num, renderedUrl } from './api.js';

/**
 * @typedef {{center: number, width: number}} Win
 * @typedef {{index: number, sop_uid: string, frame: number, position_mm: number | null,
 *            instance_number: number | null, window: Win | null, url: string}} Slice
 * @typedef {{id: number, label: string, rows: number, columns: number,
 *            pixel_spacing: number[] | null, color: boolean, spacing_mm: number | null,
 *            windows: {header: Win | null, auto: Win | null, full: Win | null},
 *            slices: Slice[]}} Stack
 * @typedef {'header' | 'auto' | 'full' | 'custom'} Preset
 * @typedef {import('./imagecache.js').CacheEntry} CacheEntry
 * @typedef {import('./imagecache.js').ImageRequest} ImageRequest
 * @typedef {import('./imagecache.js').Region} Region
 * @typedef {{res: string, viewport: number[], region: Region}} Plan
 */

const MIN_ZOOM = 0.25;
const MAX_ZOOM = 32;
const NEIGHBOURS = 4;
/** Decoded-image budget: smaller on phones and tablets. */
const CACHE_BYTES = (window.matchMedia('(pointer: coarse)').matches ? 160 : 320) * 1024 * 1024;
const PREFETCH_SHARE = 0.7;

/**
 * How far a cached image's window is from the wanted one, in [0, 1): while
 * dragging W/L the closest preview is the best stand-in.
 * @param {string} key "center,width" or "default"
 * @param {Win | null} win
 */
function windowDistance(key, win) {
  const [c, w] = key.split(',').map(Number);
  if (!win || !Number.isFinite(c) || !Number.isFinite(w)) return 0.99;
  const d = (Math.abs(c - win.center) + Math.abs(w - win.width)) / Math.max(1, win.width);
  return d / (1 + d);
}

/** @param {number} v @param {number} lo @param {number} hi */
export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

export class Viewport {
  /**
   * @param {HTMLElement} root element carrying the data-* state hook
   * @param {HTMLCanvasElement} canvas
   * @param {{status: HTMLElement, statusText: HTMLElement, retry: HTMLElement,
   *          signIn: HTMLAnchorElement, busy: HTMLElement, onChange: () => void}} ui
   */
  constructor(root, canvas, ui) {
    this.root = root;
    this.canvas = canvas;
    const ctx = canvas.getContext('2d', { alpha: true });
    if (!ctx) throw new Error('Canvas 2D is not available');
    this.ctx = ctx;
    this.ui = ui;
    this.cache = new ImageCache(CACHE_BYTES);
    this.loader = new ImageLoader(this.cache, {
      concurrency: 4,
      onLoad: (entry) => this.onImageLoaded(entry),
      onError: (req) => this.onImageError(req),
    });

    /** @type {Stack | null} */
    this.stack = null;
    this.index = 0;
    /** @type {Preset} */
    this.preset = 'auto';
    /** @type {Win | null} */
    this.custom = null;
    this.invert = false;
    this.zoom = 1;
    this.cx = 0;
    this.cy = 0;
    /** True while the user drags W/L: previews in JPEG, no prefetch. */
    this.interacting = false;
    /** True during cine playback. */
    this.playing = false;

    this.cssW = 0;
    this.cssH = 0;
    this.dpr = 1;
    /** @type {CacheEntry | null} */
    this.lastDrawn = null;
    /** @type {'loading' | 'ready' | 'error'} */
    this.state = 'loading';
    this.progress = { done: 0, total: 0 };
    /** @type {string | null} set when the series itself could not be shown */
    this.fatal = null;
    /** @type {(() => void) | null} what "Try again" does after `fatal` */
    this.fatalRetry = null;
    /** Set when the session has ended: "Sign in again" instead of "Try again". */
    this.signedOut = false;
    this.drawQueued = false;
    /** @type {number | undefined} */
    this.settleTimer = undefined;
    /** @type {Plan | null} */
    this.plan = null;
    /** @type {number[]} slices the prefetch should end up with */
    this.prefetchSet = [];
    this.loadingMessage = 'Loading series…';
    /** when the view started waiting for its image (0 = not waiting) */
    this.waitingSince = 0;

    new ResizeObserver(() => this.measure()).observe(root);
    this.measure();
    ui.retry.addEventListener('click', () => {
      const again = this.fatal ? this.fatalRetry : null;
      if (again) {
        again();
        return;
      }
      this.loader.clearFailures();
      this.fatal = null;
      this.updateWanted();
      this.scheduleDraw();
    });
  }

  /* ---------------------------------------------------------------- state */

  /**
   * Show a stack. Keeps nothing from the previous one.
   * @param {Stack} stack
   * @param {{index?: number}} [opts]
   */
  setStack(stack, opts = {}) {
    this.loader.cancelAll();
    this.cache.clear();
    this.loader.clearFailures();
    this.stack = stack;
    this.fatal = stack.slices.length ? null : 'This series has no images that can be shown.';
    this.fatalRetry = null;
    this.lastDrawn = null;
    const n = stack.slices.length;
    this.index = clamp(opts.index ?? Math.floor((n - 1) / 2), 0, Math.max(0, n - 1));
    this.preset = this.hasHeaderWindow() ? 'header' : 'auto';
    this.custom = null;
    this.zoom = 1;
    this.cx = stack.columns / 2;
    this.cy = stack.rows / 2;
    this.plan = null;
    this.changed(true);
  }

  /** Forget the current stack and show a message (e.g. while a series loads). */
  clear(message = 'Loading series…') {
    this.loader.cancelAll();
    this.cache.clear();
    this.stack = null;
    this.lastDrawn = null;
    this.fatal = null;
    this.fatalRetry = null;
    this.signedOut = false;
    this.loadingMessage = message;
    this.changed(true);
  }

  /**
   * Show an error instead of the series.
   * @param {string} message
   * @param {{retry?: () => void, signedOut?: boolean}} [opts] what "Try again" does (no
   *   button without it); whether the session has ended (a "Sign in again" link instead)
   */
  fail(message, opts = {}) {
    this.loader.cancelAll();
    this.stack = null;
    this.lastDrawn = null;
    this.fatal = message;
    this.fatalRetry = opts.retry || null;
    this.signedOut = !!opts.signedOut;
    this.changed(true);
  }

  get count() {
    return this.stack ? this.stack.slices.length : 0;
  }

  /** @returns {Slice | null} */
  get slice() {
    return this.stack ? this.stack.slices[this.index] || null : null;
  }

  /** @param {number} i */
  setSlice(i) {
    if (!this.stack) return;
    const next = clamp(Math.round(i), 0, this.count - 1);
    if (next === this.index) return;
    this.index = next;
    this.changed(true);
  }

  /** @param {number} delta */
  scrollBy(delta) {
    this.setSlice(this.index + delta);
  }

  hasHeaderWindow() {
    const s = this.stack;
    return !!s && (!!s.windows.header || s.slices.some((sl) => !!sl.window));
  }

  get windowEnabled() {
    return !!this.stack && !this.stack.color;
  }

  /**
   * The window used for slice i with the current preset.
   * @param {number} [i]
   * @returns {Win | null}
   */
  windowFor(i = this.index) {
    const s = this.stack;
    if (!s || s.color) return null;
    const w = s.windows;
    switch (this.preset) {
      case 'custom':
        return this.custom;
      case 'header':
        return s.slices[i]?.window || w.header || w.auto || w.full;
      case 'full':
        return w.full || w.auto;
      default:
        return w.auto || w.full || w.header;
    }
  }

  /** @param {Preset} preset */
  setPreset(preset) {
    if (preset === 'custom' && !this.custom) return;
    this.preset = preset;
    this.changed(true);
  }

  /**
   * @param {number} center
   * @param {number} width
   */
  setWindow(center, width) {
    if (!this.windowEnabled) return;
    this.custom = { center, width: Math.max(1, width) };
    this.preset = 'custom';
    this.changed(true);
  }

  /** @param {boolean} on */
  setInteracting(on) {
    if (this.interacting === on) return;
    this.interacting = on;
    this.changed(true);
  }

  /** @param {boolean} on */
  setPlaying(on) {
    this.playing = on;
    this.changed(true);
  }

  /** @param {boolean} [on] */
  toggleInvert(on = !this.invert) {
    this.invert = on;
    this.changed(false);
  }

  /* ------------------------------------------------------------ geometry */

  /** @returns {[number, number]} display units per image pixel (x, y) */
  get aspect() {
    const ps = this.stack?.pixel_spacing;
    if (ps && ps[0] > 0 && ps[1] > 0) {
      const m = Math.min(ps[0], ps[1]);
      return [ps[1] / m, ps[0] / m];
    }
    return [1, 1];
  }

  /** CSS px per display unit when zoom = 1 */
  get fitScale() {
    if (!this.stack || !this.cssW || !this.cssH) return 1;
    const [ax, ay] = this.aspect;
    return Math.min(this.cssW / (this.stack.columns * ax), this.cssH / (this.stack.rows * ay));
  }

  get scale() {
    return this.fitScale * this.zoom;
  }

  /**
   * Zoom by a factor, keeping the point (px, py) (CSS px in the viewport) fixed.
   * @param {number} factor
   * @param {number} [px]
   * @param {number} [py]
   */
  zoomBy(factor, px = this.cssW / 2, py = this.cssH / 2) {
    if (!this.stack) return;
    const [ax, ay] = this.aspect;
    const s0 = this.scale;
    const ix = this.cx + (px - this.cssW / 2) / (ax * s0);
    const iy = this.cy + (py - this.cssH / 2) / (ay * s0);
    this.zoom = clamp(this.zoom * factor, MIN_ZOOM, MAX_ZOOM);
    const s1 = this.scale;
    this.cx = ix - (px - this.cssW / 2) / (ax * s1);
    this.cy = iy - (py - this.cssH / 2) / (ay * s1);
    this.clampPan();
    this.changed(false);
  }

  /**
   * Move the image by (dx, dy) CSS px.
   * @param {number} dx
   * @param {number} dy
   */
  panBy(dx, dy) {
    if (!this.stack) return;
    const [ax, ay] = this.aspect;
    const s = this.scale;
    this.cx -= dx / (ax * s);
    this.cy -= dy / (ay * s);
    this.clampPan();
    this.changed(false);
  }

  clampPan() {
    if (!this.stack) return;
    this.cx = clamp(this.cx, 0, this.stack.columns);
    this.cy = clamp(this.cy, 0, this.stack.rows);
  }

  fit() {
    if (!this.stack) return;
    this.zoom = 1;
    this.cx = this.stack.columns / 2;
    this.cy = this.stack.rows / 2;
    this.changed(false);
  }

  /** Fit, and undo W/L and invert. */
  reset() {
    if (!this.stack) return;
    this.preset = this.hasHeaderWindow() ? 'header' : 'auto';
    this.custom = null;
    this.invert = false;
    this.fit();
    this.changed(true);
  }

  measure() {
    const rect = this.root.getBoundingClientRect();
    const w = Math.round(rect.width);
    const h = Math.round(rect.height);
    const dpr = window.devicePixelRatio || 1;
    if (w === this.cssW && h === this.cssH && dpr === this.dpr) return;
    this.cssW = w;
    this.cssH = h;
    this.dpr = dpr;
    this.canvas.width = Math.max(1, Math.round(w * dpr));
    this.canvas.height = Math.max(1, Math.round(h * dpr));
    this.changed(false);
  }

  /**
   * Which image size/region to ask the server for at the current view:
   * device-pixel resolution, never more than the stored image has, and only
   * the visible part (plus a margin) when zoomed far into a large image.
   * @returns {Plan | null}
   */
  makePlan() {
    const st = this.stack;
    if (!st || !this.cssW || !this.cssH) return null;
    const cols = st.columns;
    const rows = st.rows;
    const [ax, ay] = this.aspect;
    const s = this.scale;
    let out = Math.min(1, Math.max(ax, ay) * s * this.dpr);
    // Quantise to quarter-octaves so small zoom steps reuse cached images.
    if (out < 1) out = Math.min(1, 2 ** (Math.ceil(Math.log2(out) * 4) / 4));
    const halfW = this.cssW / 2 / (ax * s);
    const halfH = this.cssH / 2 / (ay * s);
    const vx0 = clamp(this.cx - halfW, 0, cols);
    const vx1 = clamp(this.cx + halfW, 0, cols);
    const vy0 = clamp(this.cy - halfH, 0, rows);
    const vy1 = clamp(this.cy + halfH, 0, rows);
    const whole = cols * out * rows * out;
    const canvasPx = this.canvas.width * this.canvas.height;
    const visibleShare = ((vx1 - vx0) * (vy1 - vy0)) / (cols * rows);
    if (whole <= 2.5 * canvasPx || visibleShare >= 0.6) {
      const vw = Math.max(1, Math.round(cols * out));
      const vh = Math.max(1, Math.round(rows * out));
      return { res: `${vw},${vh}`, viewport: [vw, vh], region: { x: 0, y: 0, w: cols, h: rows } };
    }
    const g = Math.max(16, 2 ** Math.floor(Math.log2(Math.min(vx1 - vx0, vy1 - vy0) / 4)));
    const mx = (vx1 - vx0) * 0.25;
    const my = (vy1 - vy0) * 0.25;
    const x0 = clamp(Math.floor((vx0 - mx) / g) * g, 0, cols);
    const x1 = clamp(Math.ceil((vx1 + mx) / g) * g, 0, cols);
    const y0 = clamp(Math.floor((vy0 - my) / g) * g, 0, rows);
    const y1 = clamp(Math.ceil((vy1 + my) / g) * g, 0, rows);
    const vw = Math.max(1, Math.round((x1 - x0) * out));
    const vh = Math.max(1, Math.round((y1 - y0) * out));
    const viewport = [vw, vh, x0, y0, x1 - x0, y1 - y0];
    return { res: viewport.join(','), viewport, region: { x: x0, y: y0, w: x1 - x0, h: y1 - y0 } };
  }

  /* ------------------------------------------------------------ requests */

  /** @param {Win | null} w */
  static windowKey(w) {
    return w ? `${num(w.center)},${num(w.width)}` : 'default';
  }

  /**
   * @param {number} i slice index
   * @param {'png' | 'jpeg'} format
   * @param {number} priority
   * @returns {ImageRequest | null}
   */
  requestFor(i, format, priority) {
    const slice = this.stack?.slices[i];
    const plan = this.plan;
    if (!slice || !plan) return null;
    const win = this.windowFor(i);
    const wkey = Viewport.windowKey(win);
    return {
      key: `${slice.url}|${wkey}|${plan.res}|${format}`,
      url: renderedUrl(slice.url, { window: win, viewport: plan.viewport, format }),
      slice: slice.url,
      window: wkey,
      res: plan.res,
      lossless: format === 'png',
      region: plan.region,
      priority,
    };
  }

  /**
   * Request for a frame needed quickly: the PNG when cached, else a JPEG.
   * @param {number} i
   * @param {number} priority
   */
  quickRequest(i, priority) {
    const png = this.requestFor(i, 'png', priority);
    if (!png || this.cache.has(png.key)) return null;
    return this.requestFor(i, 'jpeg', priority);
  }

  /** Tell the loader what is needed now, most urgent first. */
  updateWanted() {
    this.plan = this.makePlan();
    const st = this.stack;
    if (!st || !this.plan || this.fatal) {
      this.loader.want([]);
      this.progress = { done: 0, total: 0 };
      return;
    }
    const n = st.slices.length;
    /** @type {(ImageRequest | null)[]} */
    const list = [];
    if (this.interacting) {
      // One preview in flight at a time: keep it (never abort it for a newer
      // window, or a continuous drag would starve), and ask for the latest
      // window when it lands.
      const slice = st.slices[this.index];
      const pending = [...this.loader.inflight.values()].map((j) => j.req).filter((r) => r.slice === slice.url);
      const next = this.quickRequest(this.index, 0);
      this.loader.want(pending.length ? pending : next ? [next] : []);
      this.countProgress([]);
      return;
    }
    list.push(this.playing ? this.quickRequest(this.index, 0) : this.requestFor(this.index, 'png', 0));
    if (this.playing) {
      for (let k = 1; k <= 6 && k < n; k++) list.push(this.quickRequest((this.index + k) % n, 1));
    }
    // Neighbours both ways, then the whole stack nearest-first (budget-capped).
    const order = [];
    for (let d = 1; d < n; d++) {
      if (this.index + d < n) order.push(this.index + d);
      if (this.index - d >= 0) order.push(this.index - d);
    }
    const perImage = this.plan.viewport[0] * this.plan.viewport[1] * 4;
    const budget = Math.max(NEIGHBOURS * 2, Math.floor((CACHE_BYTES * PREFETCH_SHARE) / perImage));
    const prefetch = order.slice(0, Math.min(order.length, budget - 1));
    prefetch.forEach((i, k) => list.push(this.requestFor(i, 'png', k < NEIGHBOURS * 2 ? 1 : 2)));
    this.loader.want(/** @type {ImageRequest[]} */ (list.filter(Boolean)));
    this.countProgress([this.index, ...prefetch]);
  }

  /** @param {number[]} indices slices that should end up cached */
  countProgress(indices) {
    this.prefetchSet = indices;
    let done = 0;
    for (const i of indices) {
      const r = this.requestFor(i, 'png', 0);
      if (r && this.cache.has(r.key)) done++;
    }
    this.progress = { done, total: indices.length };
  }

  /** @param {CacheEntry} entry */
  onImageLoaded(entry) {
    if (this.interacting) this.updateWanted();
    if (entry.lossless && this.progress.done < this.progress.total) this.countProgress(this.prefetchSet);
    this.scheduleDraw();
  }

  /** @param {ImageRequest} req */
  onImageError(req) {
    if (req.slice === this.slice?.url) this.scheduleDraw();
  }

  /**
   * Is a frame for slice i at the current window ready to show (cine)?
   * @param {number} i
   */
  hasFrame(i) {
    const png = this.requestFor(i, 'png', 0);
    if (!png) return false;
    return this.cache.has(png.key) || this.cache.has(png.key.replace(/\|png$/, '|jpeg'))
      || this.loader.failed.has(png.key.replace(/\|png$/, '|jpeg'));
  }

  /* -------------------------------------------------------------- drawing */

  /**
   * Something changed: redraw on the next frame; refresh the wish list now
   * for slice/window changes, or after a short pause for pan/zoom/resize.
   * @param {boolean} now
   */
  changed(now) {
    clearTimeout(this.settleTimer);
    if (now) {
      this.updateWanted();
    } else {
      this.settleTimer = window.setTimeout(() => {
        this.updateWanted();
        this.scheduleDraw();
      }, 120);
    }
    this.scheduleDraw();
  }

  scheduleDraw() {
    if (this.drawQueued) return;
    this.drawQueued = true;
    requestAnimationFrame(() => {
      this.drawQueued = false;
      this.draw();
    });
  }

  /**
   * Best cached image for the current slice.
   * @returns {{entry: CacheEntry, exact: boolean} | null}
   */
  pick() {
    const slice = this.slice;
    if (!slice) return null;
    const win = this.windowFor();
    const wkey = Viewport.windowKey(win);
    const res = this.plan?.res;
    let best = null;
    let bestScore = Infinity;
    for (const e of this.cache.forSlice(slice.url)) {
      let score;
      if (e.window === wkey && e.res === res) score = e.lossless ? 0 : 1;
      else if (e.window === wkey) score = 2 + (e.lossless ? 0 : 0.5) - e.region.w * 1e-6;
      else score = 4 + windowDistance(e.window, win);
      if (score < bestScore) {
        bestScore = score;
        best = e;
      }
    }
    if (!best) return null;
    this.cache.get(best.key);
    const fast = this.interacting || this.playing;
    return { entry: best, exact: bestScore === 0 || (bestScore === 1 && fast) };
  }

  draw() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    let state = /** @type {'loading' | 'ready' | 'error'} */ ('loading');
    let message = this.fatal || this.loadingMessage || 'Loading…';
    let showStatus = true;
    let error = !!this.fatal;
    if (this.stack && !this.fatal) {
      this.loadingMessage = '';
      const picked = this.pick();
      const failure = this.currentFailure();
      const failed = !!failure && !(picked && picked.entry.window === Viewport.windowKey(this.windowFor()));
      // On failure, show the message over an empty view, not another slice.
      const last = this.lastDrawn && this.cache.entries.get(this.lastDrawn.key) === this.lastDrawn
        ? this.lastDrawn : null; // evicted bitmaps are closed and cannot be drawn
      const entry = picked ? picked.entry : failed ? null : last;
      if (entry) {
        const under = this.underlay(entry);
        if (under) this.paint(under);
        this.paint(entry);
        this.lastDrawn = entry;
      }
      if (picked && picked.exact) {
        state = 'ready';
        showStatus = false;
      } else if (failed) {
        state = 'error';
        error = true;
        message = `This image could not be loaded: ${failure}`;
      } else {
        showStatus = !entry;
        message = 'Loading image…';
      }
    } else if (this.fatal) {
      state = 'error';
    }
    // A small spinner over a stale image, only when loading takes a while.
    const waiting = state === 'loading' && !showStatus && !!this.stack && !this.interacting;
    if (!waiting) this.waitingSince = 0;
    else if (!this.waitingSince) {
      this.waitingSince = performance.now();
      setTimeout(() => this.scheduleDraw(), 400);
    }
    this.ui.busy.hidden = !waiting || performance.now() - this.waitingSince < 350;
    this.ui.status.hidden = !showStatus;
    this.ui.status.classList.toggle('is-error', error);
    if (this.ui.statusText.textContent !== message) this.ui.statusText.textContent = message;
    this.ui.retry.hidden = !error || this.signedOut || !(this.stack || this.fatalRetry);
    this.ui.signIn.hidden = !(error && this.signedOut);
    this.state = state;
    this.publish();
  }

  /**
   * When the image to draw is only a region (zoomed in), a whole-image
   * version of the same slice to draw under it, so panning shows no gaps.
   * @param {CacheEntry} entry
   * @returns {CacheEntry | null}
   */
  underlay(entry) {
    const st = this.stack;
    if (!st || (entry.region.w >= st.columns && entry.region.h >= st.rows)) return null;
    let best = null;
    for (const e of this.cache.forSlice(entry.slice)) {
      if (e.region.w < st.columns || e.region.h < st.rows) continue;
      if (!best || (e.window === entry.window && best.window !== entry.window)) best = e;
    }
    return best;
  }

  /** @returns {string | undefined} error text if the current slice failed */
  currentFailure() {
    const png = this.requestFor(this.index, 'png', 0);
    if (!png) return undefined;
    return this.loader.failed.get(png.key) || this.loader.failed.get(png.key.replace(/\|png$/, '|jpeg'));
  }

  /** @param {CacheEntry} entry */
  paint(entry) {
    const { ctx } = this;
    const [ax, ay] = this.aspect;
    const s = this.scale * this.dpr;
    const r = entry.region;
    const x = (this.cssW / 2) * this.dpr + (r.x - this.cx) * ax * s;
    const y = (this.cssH / 2) * this.dpr + (r.y - this.cy) * ay * s;
    const w = r.w * ax * s;
    const h = r.h * ay * s;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(entry.bitmap, x, y, w, h);
    if (this.invert) {
      // white - pixel == inverted pixel; works the same for PNG and JPEG.
      ctx.save();
      ctx.globalCompositeOperation = 'difference';
      ctx.fillStyle = '#fff';
      ctx.fillRect(x, y, w, h);
      ctx.restore();
    }
  }

  /** Mirror the state onto data-* attributes (test hook) and tell the UI. */
  publish() {
    const d = this.root.dataset;
    const win = this.windowFor();
    /** @type {Record<string, string>} */
    const next = {
      state: this.state,
      sliceIndex: String(this.index),
      sliceCount: String(this.count),
      windowCenter: win ? num(win.center) : '',
      windowWidth: win ? num(win.width) : '',
      zoom: String(Math.round(this.zoom * 1000) / 1000),
      invert: String(this.invert),
    };
    for (const [k, v] of Object.entries(next)) if (d[k] !== v) d[k] = v;
    this.ui.onChange();
  }
}
