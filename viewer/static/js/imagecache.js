// @ts-check
/**
 * Bounded in-memory LRU of decoded images, and a small request scheduler that
 * fetches them with a concurrency limit, priorities and cancellation.
 */
import { fetchBitmap, isAbort } from './api.js';

/**
 * @typedef {{x: number, y: number, w: number, h: number}} Region  source rectangle in image pixels
 * @typedef {{
 *   key: string, slice: string, window: string, res: string, lossless: boolean,
 *   bitmap: ImageBitmap, region: Region, bytes: number
 * }} CacheEntry
 * @typedef {{
 *   key: string, url: string, slice: string, window: string, res: string,
 *   lossless: boolean, region: Region, priority: number
 * }} ImageRequest
 */

export class ImageCache {
  /** @param {number} maxBytes budget for decoded pixels (RGBA estimate) */
  constructor(maxBytes) {
    this.maxBytes = maxBytes;
    this.bytes = 0;
    /** @type {Map<string, CacheEntry>} insertion order = LRU order */
    this.entries = new Map();
    /** @type {Map<string, Set<string>>} slice id -> keys */
    this.bySlice = new Map();
  }

  /**
   * @param {string} key
   * @returns {CacheEntry | undefined}
   */
  get(key) {
    const entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);
      this.entries.set(key, entry);
    }
    return entry;
  }

  /** @param {string} key */
  has(key) {
    return this.entries.has(key);
  }

  /** @param {CacheEntry} entry */
  set(entry) {
    this.delete(entry.key);
    this.entries.set(entry.key, entry);
    this.bytes += entry.bytes;
    let keys = this.bySlice.get(entry.slice);
    if (!keys) this.bySlice.set(entry.slice, (keys = new Set()));
    keys.add(entry.key);
    for (const [key] of this.entries) {
      if (this.bytes <= this.maxBytes || key === entry.key) break;
      this.delete(key);
    }
  }

  /** @param {string} key */
  delete(key) {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    this.bytes -= entry.bytes;
    const keys = this.bySlice.get(entry.slice);
    if (keys) {
      keys.delete(key);
      if (!keys.size) this.bySlice.delete(entry.slice);
    }
    entry.bitmap.close();
  }

  clear() {
    for (const key of [...this.entries.keys()]) this.delete(key);
  }

  /**
   * All cached entries of one slice (any window or resolution), without
   * touching their LRU position.
   * @param {string} slice
   * @returns {CacheEntry[]}
   */
  forSlice(slice) {
    const keys = this.bySlice.get(slice);
    if (!keys) return [];
    /** @type {CacheEntry[]} */
    const out = [];
    for (const key of keys) {
      const entry = this.entries.get(key);
      if (entry) out.push(entry);
    }
    return out;
  }
}

/**
 * Fetches images into an ImageCache. The owner calls want() with the full,
 * ordered list of what it needs now; anything in flight that is no longer
 * wanted is aborted, so stale responses never pile up.
 */
export class ImageLoader {
  /**
   * @param {ImageCache} cache
   * @param {{concurrency?: number, onLoad?: (e: CacheEntry) => void,
   *          onError?: (r: ImageRequest, err: Error) => void}} opts
   */
  constructor(cache, opts) {
    this.cache = cache;
    this.concurrency = opts.concurrency || 4;
    this.onLoad = opts.onLoad || (() => {});
    this.onError = opts.onError || (() => {});
    /** @type {ImageRequest[]} */
    this.queue = [];
    /** @type {Map<string, {req: ImageRequest, ctrl: AbortController}>} */
    this.inflight = new Map();
    /** @type {Map<string, string>} key -> error message; not retried until cleared */
    this.failed = new Map();
  }

  /**
   * Replace the wish list. Lower priority number = more urgent; the list is
   * served in order. Requests with priority >= 2 (prefetch) only use part of
   * the connection pool so a visible slice never waits behind them long.
   * @param {ImageRequest[]} requests
   */
  want(requests) {
    const wanted = new Set(requests.map((r) => r.key));
    for (const [key, job] of this.inflight) {
      if (!wanted.has(key)) {
        job.ctrl.abort();
        this.inflight.delete(key);
      }
    }
    this.queue = requests.filter(
      (r) => !this.cache.has(r.key) && !this.inflight.has(r.key) && !this.failed.has(r.key),
    );
    this.pump();
  }

  /** Forget failures so they can be tried again. */
  clearFailures() {
    this.failed.clear();
  }

  cancelAll() {
    for (const job of this.inflight.values()) job.ctrl.abort();
    this.inflight.clear();
    this.queue = [];
  }

  /** @returns {boolean} */
  get busy() {
    return this.inflight.size > 0 || this.queue.length > 0;
  }

  pump() {
    while (this.queue.length) {
      const next = this.queue[0];
      const limit = next.priority >= 2 ? Math.max(1, this.concurrency - 2) : this.concurrency;
      if (this.inflight.size >= limit) {
        // An urgent request may still go if the pool is only full of prefetches.
        if (next.priority >= 2 || this.inflight.size >= this.concurrency + 2) return;
      }
      this.queue.shift();
      if (this.cache.has(next.key) || this.inflight.has(next.key)) continue;
      this.start(next);
    }
  }

  /** @param {ImageRequest} req */
  start(req) {
    const ctrl = new AbortController();
    this.inflight.set(req.key, { req, ctrl });
    fetchBitmap(req.url, ctrl.signal).then(
      (bitmap) => {
        if (this.inflight.get(req.key)?.ctrl !== ctrl) {
          bitmap.close();
          return;
        }
        this.inflight.delete(req.key);
        /** @type {CacheEntry} */
        const entry = {
          key: req.key, slice: req.slice, window: req.window, res: req.res,
          lossless: req.lossless, region: req.region, bitmap,
          bytes: bitmap.width * bitmap.height * 4,
        };
        this.cache.set(entry);
        this.onLoad(entry);
        this.pump();
      },
      (err) => {
        if (this.inflight.get(req.key)?.ctrl === ctrl) this.inflight.delete(req.key);
        if (!isAbort(err)) {
          this.failed.set(req.key, err.message || String(err));
          this.onError(req, err);
        }
        this.pump();
      },
    );
  }
}
