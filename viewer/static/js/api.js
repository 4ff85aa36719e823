// @ts-check
/**
 * Tiny wrapper around fetch() for the viewer's JSON API and rendered images.
 * Errors from the server come as JSON `{"error": "..."}`; they are turned
 * into ApiError with that text so the UI can show it to people.
 */

/**
 * A session held in memory (the embedded viewer): sent as a header on every
 * request, so the viewer works where the browser refuses third-party cookies.
 * @type {{token: string, csrf: string} | null}
 */
let session = null;
/** @type {((err: ApiError) => void) | null} */
let onUnauthorized = null;

/**
 * Use this session for every request from now on.
 * @param {string} token
 * @param {string} csrf
 * @param {(err: ApiError) => void} [whenRefused] called when the server answers 401
 */
export function useSession(token, csrf, whenRefused) {
  session = { token, csrf };
  onUnauthorized = whenRefused || null;
}

/**
 * Call `whenRefused` whenever the server answers 401: the session has ended (signed out
 * after a while without activity, or from another tab).
 * @param {(err: ApiError) => void} whenRefused
 */
export function onSignedOut(whenRefused) {
  onUnauthorized = whenRefused;
}

/** True when requests carry the in-memory session (cookies may be refused). */
export function hasSessionHeader() {
  return session !== null;
}

/**
 * Headers that authenticate a request: the CSRF token (from the in-memory session,
 * or the page's meta tag) and the session itself when it is held in memory.
 * @returns {Record<string, string>}
 */
export function authHeaders() {
  if (session) return { 'X-Viewer-Session': session.token, 'X-CSRF-Token': session.csrf };
  const meta = /** @type {HTMLMetaElement | null} */ (document.querySelector('meta[name="csrf-token"]'));
  return meta && meta.content ? { 'X-CSRF-Token': meta.content } : {};
}

export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {number} status HTTP status (0 for network failures)
   */
  constructor(message, status) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

/**
 * @param {Response} response
 * @returns {Promise<ApiError>}
 */
async function errorFrom(response) {
  let text = '';
  try {
    const type = response.headers.get('Content-Type') || '';
    if (type.includes('json')) {
      const body = await response.json();
      if (body && typeof body.error === 'string') text = body.error;
    }
  } catch (_) {
    // The body was not JSON; fall back to the status line.
  }
  if (!text) {
    text = response.status === 401 || response.status === 403
      ? 'Your session has expired or you are not signed in. Please open your sign-in link again.'
      : `The server answered ${response.status} ${response.statusText}`.trim();
  }
  return new ApiError(text, response.status);
}

/**
 * @param {string} url
 * @param {RequestInit} [init]
 * @returns {Promise<Response>}
 */
export async function request(url, init = {}) {
  let response;
  try {
    response = await fetch(url, {
      credentials: 'same-origin',
      ...init,
      headers: { ...authHeaders(), ...(init.headers || {}) },
    });
  } catch (err) {
    if (err instanceof DOMException && err.name === 'AbortError') throw err;
    throw new ApiError('Could not reach the server. Check your connection and try again.', 0);
  }
  if (!response.ok) {
    const err = await errorFrom(response);
    if (response.status === 401 && onUnauthorized) onUnauthorized(err);
    throw err;
  }
  return response;
}

/**
 * GET a JSON document.
 * @param {string} url
 * @param {AbortSignal} [signal]
 * @returns {Promise<any>}
 */
export async function fetchJSON(url, signal) {
  const response = await request(url, { headers: { Accept: 'application/json' }, signal });
  return response.json();
}

/**
 * GET an image and decode it off the main thread.
 * @param {string} url
 * @param {AbortSignal} [signal]
 * @returns {Promise<ImageBitmap>}
 */
export async function fetchBitmap(url, signal) {
  const response = await request(url, { headers: { Accept: 'image/png, image/jpeg;q=0.9' }, signal });
  const blob = await response.blob();
  if (signal && signal.aborted) throw new DOMException('Aborted', 'AbortError');
  try {
    return await createImageBitmap(blob);
  } catch (_) {
    throw new ApiError('The image could not be decoded by this browser.', response.status);
  }
}

/**
 * GET an image as a blob: URL, for an <img> whose request must carry the session header.
 * @param {string} url
 * @returns {Promise<string>}
 */
export async function fetchObjectURL(url) {
  const response = await request(url, { headers: { Accept: 'image/png, image/jpeg;q=0.9' } });
  return URL.createObjectURL(await response.blob());
}

/**
 * @param {unknown} err
 * @returns {boolean}
 */
export function isAbort(err) {
  return err instanceof DOMException && err.name === 'AbortError';
}

/**
 * Build a DICOMweb rendered-resource URL (PS3.18 8.3.5).
 * @param {string} base slice.url
 * @param {{window?: {center: number, width: number} | null,
 *          viewport: number[], format: 'png' | 'jpeg', quality?: number}} p
 * @returns {string}
 */
export function renderedUrl(base, p) {
  const parts = [];
  if (p.window) parts.push(`window=${num(p.window.center)},${num(p.window.width)}`);
  parts.push(`viewport=${p.viewport.map((v) => Math.round(v)).join(',')}`);
  if (p.format === 'jpeg') parts.push(`quality=${p.quality || 85}`);
  parts.push(`accept=${p.format === 'jpeg' ? 'image/jpeg' : 'image/png'}`);
  return base + (base.includes('?') ? '&' : '?') + parts.join('&');
}

/**
 * Compact number for URLs and cache keys (at most 2 decimals).
 * @param {number} v
 * @returns {string}
 */
export function num(v) {
  return String(Math.round(v * 100) / 100);
}
