// @ts-check
/**
 * Times on a page in the reader's own time zone: the server writes them in UTC
 * (`<time datetime="…Z">2026-11-30 23:09 UTC</time>`), which is no one's clock.
 */
const format = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
for (const el of document.querySelectorAll('time[datetime]')) {
  const when = new Date(el.getAttribute('datetime') || '');
  if (!Number.isNaN(when.getTime())) {
    el.title = el.textContent || '';
    el.textContent = format.format(when);
  }
}
