// @ts-check
/**
 * User input for the viewport: pointer (mouse, touch, pen), wheel, keyboard,
 * and the cine player.
 */
import { clamp } from './viewport.js';

/**
 * @typedef {import('./viewport.js').Viewport} Viewport
 * @typedef {'scroll' | 'wl' | 'pan'} Tool
 */

/** Cine: plays the stack as a looping movie. */
export class Cine {
  /**
   * @param {Viewport} vp
   * @param {(playing: boolean) => void} onChange
   */
  constructor(vp, onChange) {
    this.vp = vp;
    this.onChange = onChange;
    this.fps = 10;
    this.playing = false;
    this.last = 0;
    /** @type {number | undefined} */
    this.raf = undefined;
    this.tick = this.tick.bind(this);
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  play() {
    if (this.playing || this.vp.count < 2) return;
    this.playing = true;
    this.last = performance.now();
    this.vp.setPlaying(true);
    this.raf = requestAnimationFrame(this.tick);
    this.onChange(true);
  }

  pause() {
    if (!this.playing) return;
    this.playing = false;
    if (this.raf !== undefined) cancelAnimationFrame(this.raf);
    this.vp.setPlaying(false);
    this.onChange(false);
  }

  /** @param {number} now */
  tick(now) {
    if (!this.playing) return;
    const interval = 1000 / this.fps;
    if (now - this.last >= interval) {
      const n = this.vp.count;
      const next = (this.vp.index + 1) % n;
      // Wait for the next frame (up to 1.5 s) rather than flash stale images.
      if (this.vp.hasFrame(next) || now - this.last > 1500) {
        this.vp.setSlice(next);
        this.last = now - this.last < interval * 2 ? this.last + interval : now;
      }
    }
    this.raf = requestAnimationFrame(this.tick);
  }
}

/**
 * Pointer gestures and the wheel on the viewport element.
 * @param {Viewport} vp
 * @param {HTMLElement} el
 * @param {{tool: () => Tool, onUser: () => void, onScroll: () => void}} opts
 */
export function bindPointer(vp, el, opts) {
  /** @type {Map<number, {x: number, y: number}>} */
  const pointers = new Map();
  /** @type {null | {kind: 'scroll' | 'wl' | 'pan' | 'pinch' | 'none', id: number, x0: number, y0: number,
   *   lastX: number, lastY: number, index0: number, c0: number, w0: number, dist: number}} */
  let g = null;

  /** @param {PointerEvent} e */
  const local = (e) => {
    const r = el.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  };

  const pinchInfo = () => {
    const [a, b] = [...pointers.values()];
    return { dist: Math.hypot(a.x - b.x, a.y - b.y), x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  };

  /**
   * @param {'scroll' | 'wl' | 'pan' | 'pinch' | 'none'} kind
   * @param {number} id
   * @param {{x: number, y: number}} p
   */
  const start = (kind, id, p) => {
    if (kind === 'wl' && !vp.windowEnabled) kind = 'none';
    const win = vp.windowFor();
    g = {
      kind, id, x0: p.x, y0: p.y, lastX: p.x, lastY: p.y, index0: vp.index,
      c0: win ? win.center : 0, w0: win ? win.width : 1, dist: 0,
    };
    if (kind === 'pinch') {
      const pi = pinchInfo();
      g.dist = pi.dist;
      g.lastX = pi.x;
      g.lastY = pi.y;
    }
    if (kind === 'wl') vp.setInteracting(true);
    el.classList.toggle('is-dragging', kind !== 'none');
  };

  const end = () => {
    if (g && g.kind === 'wl') vp.setInteracting(false);
    g = null;
    el.classList.remove('is-dragging');
  };

  el.addEventListener('pointerdown', (e) => {
    // Buttons and links inside the viewport ("Try again", "Sign in again") keep their clicks.
    if (e.target instanceof Element && e.target.closest('button, a[href]')) return;
    const p = local(e);
    if (e.pointerType === 'mouse') {
      if (g) return;
      /** @type {'scroll' | 'wl' | 'pan' | 'none'} */
      let kind = opts.tool();
      if (e.button === 2) kind = 'wl';
      else if (e.button === 1) kind = 'pan';
      else if (e.button !== 0) return;
      e.preventDefault();
      el.focus({ preventScroll: true });
      pointers.set(e.pointerId, p);
      el.setPointerCapture(e.pointerId);
      opts.onUser();
      start(kind, e.pointerId, p);
      return;
    }
    pointers.set(e.pointerId, p);
    el.setPointerCapture(e.pointerId);
    e.preventDefault();
    opts.onUser();
    if (pointers.size === 2) {
      if (g && g.kind === 'wl') vp.setInteracting(false);
      start('pinch', e.pointerId, p);
    } else if (pointers.size === 1) {
      start(opts.tool(), e.pointerId, p);
    } else {
      start('none', e.pointerId, p);
    }
  });

  el.addEventListener('pointermove', (e) => {
    if (!pointers.has(e.pointerId)) return;
    const p = local(e);
    pointers.set(e.pointerId, p);
    if (!g) return;
    if (g.kind === 'pinch') {
      if (pointers.size < 2) return;
      const pi = pinchInfo();
      if (g.dist > 0 && pi.dist > 0) vp.zoomBy(pi.dist / g.dist, pi.x, pi.y);
      vp.panBy(pi.x - g.lastX, pi.y - g.lastY);
      g.dist = pi.dist;
      g.lastX = pi.x;
      g.lastY = pi.y;
      return;
    }
    if (e.pointerId !== g.id) return;
    const dx = p.x - g.lastX;
    const dy = p.y - g.lastY;
    g.lastX = p.x;
    g.lastY = p.y;
    if (g.kind === 'scroll') {
      opts.onScroll();
      const step = clamp(vp.cssH / Math.max(1, vp.count), 5, 20);
      // Finger/mouse up = forward, like scrolling a page.
      vp.setSlice(g.index0 + Math.trunc((g.y0 - p.y) / step));
    } else if (g.kind === 'pan') {
      vp.panBy(dx, dy);
    } else if (g.kind === 'wl') {
      // Sensitivity proportional to the width at drag start.
      const width = g.w0 * Math.exp((p.x - g.x0) * 0.005);
      const center = g.c0 + (p.y - g.y0) * g.w0 * 0.004;
      vp.setWindow(center, width);
    }
  });

  /** @param {PointerEvent} e */
  const up = (e) => {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    if (!g) return;
    if (g.kind === 'pinch') {
      // Stop the gesture; the remaining finger does nothing until lifted.
      if (pointers.size < 2) g.kind = 'none';
      if (pointers.size === 0) end();
      return;
    }
    if (pointers.size === 0 || e.pointerId === g.id) end();
  };
  el.addEventListener('pointerup', up);
  el.addEventListener('pointercancel', up);
  el.addEventListener('lostpointercapture', up);

  el.addEventListener('contextmenu', (e) => e.preventDefault());
  el.addEventListener('dblclick', (e) => {
    e.preventDefault();
    vp.fit();
  });
  // Safari: keep its own page zoom off the image. On a Mac trackpad, Safari
  // reports pinch only as (non-standard) gesture events with a scale; on
  // touch screens the pointer events above already handle it.
  let gestureScale = 1;
  el.addEventListener('gesturestart', (e) => {
    e.preventDefault();
    gestureScale = 1;
  });
  el.addEventListener('gesturechange', (e) => {
    e.preventDefault();
    const ge = /** @type {Event & {scale?: number, clientX?: number, clientY?: number}} */ (e);
    if (pointers.size || !ge.scale) return;
    const r = el.getBoundingClientRect();
    vp.zoomBy(ge.scale / gestureScale, (ge.clientX ?? r.left + r.width / 2) - r.left,
      (ge.clientY ?? r.top + r.height / 2) - r.top);
    gestureScale = ge.scale;
  });

  let wheelAcc = 0;
  el.addEventListener('wheel', (e) => {
    e.preventDefault();
    if (!vp.stack) return;
    opts.onUser();
    const unit = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? vp.cssH : 1;
    const dy = e.deltaY * unit;
    if (e.ctrlKey || e.metaKey) {
      // Ctrl+wheel, and trackpad pinch (which browsers report as ctrl+wheel).
      const r = el.getBoundingClientRect();
      vp.zoomBy(Math.exp(clamp(-dy, -100, 100) * 0.0025), e.clientX - r.left, e.clientY - r.top);
      return;
    }
    opts.onScroll();
    if (Math.abs(dy) >= 50) {
      // A wheel notch: one slice each.
      wheelAcc = 0;
      vp.scrollBy(Math.sign(dy));
      return;
    }
    // Trackpads send many small deltas.
    wheelAcc += dy;
    const steps = Math.trunc(wheelAcc / 30);
    if (steps) {
      wheelAcc -= steps * 30;
      vp.scrollBy(steps);
    }
  }, { passive: false });
}

/**
 * Keyboard shortcuts for the whole page.
 * @param {Record<string, () => void>} actions keyed by action name
 * @param {() => boolean} helpOpen
 */
export function bindKeyboard(actions, helpOpen) {
  /** @type {Record<string, string>} */
  const keys = {
    ArrowUp: 'prev', ArrowLeft: 'prev', ArrowDown: 'next', ArrowRight: 'next',
    PageUp: 'prev10', PageDown: 'next10', Home: 'first', End: 'last',
    ' ': 'play', '+': 'zoom-in', '=': 'zoom-in', '-': 'zoom-out', _: 'zoom-out',
    f: 'fit', F: 'fit', 0: 'fit', r: 'reset', R: 'reset', i: 'invert', I: 'invert',
    1: 'preset-header', 2: 'preset-auto', 3: 'preset-full',
    s: 'tool-scroll', S: 'tool-scroll', w: 'tool-wl', W: 'tool-wl', p: 'tool-pan', P: 'tool-pan',
    '?': 'help',
  };
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    const name = keys[e.key];
    if (!name) return;
    if (helpOpen() && name !== 'help') return;
    const t = /** @type {HTMLElement} */ (e.target);
    const tag = t && t.tagName;
    if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA' || (t && t.isContentEditable)) {
      // The slice slider and selects handle their own arrows/Home/End.
      if (name !== 'help' || tag !== 'INPUT' || /** @type {HTMLInputElement} */ (t).type !== 'range') return;
    }
    if (e.key === ' ' && (tag === 'BUTTON' || tag === 'A')) return;
    const fn = actions[name];
    if (!fn) return;
    e.preventDefault();
    fn();
  });
}
