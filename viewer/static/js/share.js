// @ts-check
/**
 * Study page: "Save this image" (the current slice as a full-resolution PNG)
 * and the Share dialog (create a link, copy it, list and revoke links).
 * The Download button is a plain link: the browser streams the zip itself.
 */
import { num, request } from './api.js';

/**
 * @typedef {{slice: {url: string} | null, window: {center: number, width: number} | null,
 *            title: string, index: number}} Current
 * @typedef {{id: number, label: string, state: string, created_at: string, expires_at: string,
 *            access_code: boolean, allow_download: boolean, uses: number,
 *            last_used_at: string | null, revoke_url: string, url?: string, code?: string}} ShareLink
 */

/** @param {string} id */
function byId(id) {
  return document.getElementById(id);
}

/**
 * A JSON request with the session's credentials; the server's {"error"} as the message.
 * @param {string} url
 * @param {RequestInit} [init]
 */
function call(url, init = {}) {
  return request(url, { ...init, headers: { Accept: 'application/json', ...(init.headers || {}) } });
}

/** @param {string} text */
export function safeName(text) {
  return text.replace(/[^A-Za-z0-9]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 60) || 'image';
}

/** @param {string | null} iso */
function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/**
 * Save the current slice as a PNG: the rendered resource at full resolution with
 * the window on screen, saved through a blob URL.
 * @param {() => Current} current
 * @param {HTMLButtonElement} button
 */
async function saveImage(current, button) {
  const { slice, window: win, title, index } = current();
  if (!slice) return;
  const parts = ['accept=image/png'];
  if (win) parts.push(`window=${num(win.center)},${num(win.width)}`);
  const url = slice.url + (slice.url.includes('?') ? '&' : '?') + parts.join('&');
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const response = await call(url, { headers: { Accept: 'image/png' } });
    const blob = await response.blob();
    const href = URL.createObjectURL(blob);
    const a = document.createElement('a');
    a.href = href;
    a.download = `${safeName(title)}_slice_${index + 1}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10_000);
  } catch (err) {
    alert(`The image could not be saved: ${/** @type {Error} */ (err).message}`);
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

/** @param {HTMLDialogElement} dialog */
function initShareDialog(dialog) {
  const listUrl = dialog.dataset.sharesUrl || '';
  const open = /** @type {HTMLButtonElement} */ (byId('share-button'));
  const form = /** @type {HTMLFormElement} */ (byId('share-form'));
  const expiry = /** @type {HTMLSelectElement} */ (byId('share-expiry'));
  const withCode = /** @type {HTMLInputElement} */ (byId('share-code'));
  const allowDownload = /** @type {HTMLInputElement} */ (byId('share-download'));
  const label = /** @type {HTMLInputElement} */ (byId('share-label'));
  const create = /** @type {HTMLButtonElement} */ (byId('share-create'));
  const error = /** @type {HTMLElement} */ (byId('share-error'));
  const result = /** @type {HTMLElement} */ (byId('share-result'));
  const urlField = /** @type {HTMLInputElement} */ (byId('share-url'));
  const copy = /** @type {HTMLButtonElement} */ (byId('share-copy'));
  const codeLine = /** @type {HTMLElement} */ (byId('share-code-line'));
  const codeValue = /** @type {HTMLElement} */ (byId('share-code-value'));
  const expires = /** @type {HTMLElement} */ (byId('share-expires'));
  const status = /** @type {HTMLElement} */ (byId('share-status'));
  const list = /** @type {HTMLElement} */ (byId('share-list'));
  const empty = /** @type {HTMLElement} */ (byId('share-empty'));

  /** @param {string} text */
  function showError(text) {
    error.textContent = text;
    error.hidden = !text;
  }

  /** @param {ShareLink} link */
  function describe(link) {
    const bits = [];
    if (link.state === 'active') bits.push(`Expires ${when(link.expires_at)}`);
    else if (link.state === 'revoked') bits.push('Revoked');
    else bits.push(`Expired ${when(link.expires_at)}`);
    bits.push(link.uses === 0 ? 'not opened yet' : link.uses === 1 ? 'opened once' : `opened ${link.uses} times`);
    if (link.access_code) bits.push('access code');
    bits.push(link.allow_download ? 'download allowed' : 'view only');
    return bits.join(' · ');
  }

  /** @param {ShareLink[]} links */
  function renderList(links) {
    list.replaceChildren();
    empty.hidden = links.length > 0;
    for (const link of links) {
      const li = document.createElement('li');
      li.className = `share-item${link.state === 'active' ? '' : ' is-ended'}`;
      li.dataset.shareId = String(link.id);
      const text = document.createElement('div');
      text.className = 'share-item-text';
      const name = document.createElement('span');
      name.className = 'share-item-name';
      name.textContent = link.label || `Link ${link.id}, created ${when(link.created_at)}`;
      const meta = document.createElement('span');
      meta.className = 'share-item-meta';
      meta.textContent = describe(link);
      text.append(name, meta);
      li.append(text);
      if (link.state === 'active') {
        const revoke = document.createElement('button');
        revoke.type = 'button';
        revoke.className = 'button button-danger';
        revoke.textContent = 'Revoke';
        revoke.setAttribute('aria-label', `Revoke ${link.label || `link ${link.id}`}`);
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          try {
            await call(link.revoke_url, { method: 'DELETE' });
            status.textContent = 'The link has been revoked.';
            if (urlField.dataset.shareId === String(link.id)) result.hidden = true;
            await refresh();
          } catch (err) {
            revoke.disabled = false;
            showError(/** @type {Error} */ (err).message);
          }
        });
        li.append(revoke);
      }
      list.append(li);
    }
  }

  async function refresh() {
    try {
      const response = await call(listUrl);
      const body = await response.json();
      renderList(body.shares || []);
    } catch (err) {
      showError(`The links could not be loaded: ${/** @type {Error} */ (err).message}`);
    }
  }

  open.addEventListener('click', () => {
    showError('');
    dialog.showModal();
    refresh();
  });
  byId('share-close')?.addEventListener('click', () => dialog.close());
  // The new link and its access code are shown once: not again when the dialog reopens.
  dialog.addEventListener('close', () => {
    result.hidden = true;
    urlField.value = '';
    delete urlField.dataset.shareId;
    codeValue.textContent = '';
    status.textContent = '';
  });
  dialog.addEventListener('click', (e) => {
    if (e.target === dialog) dialog.close();
  });
  // The viewer's keyboard shortcuts are for the image, not for this form.
  dialog.addEventListener('keydown', (e) => e.stopPropagation());

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showError('');
    create.disabled = true;
    try {
      const response = await call(listUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          expires_in_hours: Number(expiry.value),
          access_code: withCode.checked,
          allow_download: allowDownload.checked,
          label: label.value.trim(),
        }),
      });
      /** @type {ShareLink} */
      const link = await response.json();
      urlField.value = link.url || '';
      urlField.dataset.shareId = String(link.id);
      codeLine.hidden = !link.code;
      codeValue.textContent = link.code || '';
      expires.textContent = `Works until ${when(link.expires_at)}${link.allow_download ? '; the recipient can download the images' : '; view only'}.`;
      result.hidden = false;
      copy.textContent = 'Copy';
      label.value = '';
      status.textContent = 'Link created.';
      urlField.focus();
      urlField.select();
      await refresh();
    } catch (err) {
      showError(`The link could not be created: ${/** @type {Error} */ (err).message}`);
    } finally {
      create.disabled = false;
    }
  });

  copy.addEventListener('click', async () => {
    let done = false;
    try {
      await navigator.clipboard.writeText(urlField.value);
      done = true;
    } catch (_) {
      urlField.select();
      done = document.execCommand('copy');
    }
    copy.textContent = done ? 'Copied' : 'Copy';
    status.textContent = done ? 'Link copied.' : 'Select the link and copy it.';
  });
}

/**
 * Wire the buttons present on this page (a share recipient has fewer).
 * @param {() => Current} current what is on screen now
 */
export function initShare(current) {
  const save = /** @type {HTMLButtonElement | null} */ (byId('save-image'));
  if (save) save.addEventListener('click', () => saveImage(current, save));
  const dialog = /** @type {HTMLDialogElement | null} */ (byId('share-dialog'));
  if (dialog) initShareDialog(dialog);
}
