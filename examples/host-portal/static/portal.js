// The portal's side of the viewer's postMessage API: log the viewer's events, send commands.
'use strict';
(function () {
  const frame = document.getElementById('viewer-frame');
  const viewerOrigin = document.body.dataset.viewerOrigin;
  const log = document.getElementById('events');
  const seriesSelect = document.getElementById('series-select');
  const state = { index: 0, count: 0, series: [] };
  if (!frame || !log) return;

  function show(text) {
    const li = document.createElement('li');
    li.textContent = text;
    log.prepend(li);
    while (log.children.length > 50) log.lastChild.remove();
  }

  // Only messages from the viewer's origin and from the frame itself.
  window.addEventListener('message', (event) => {
    if (event.origin !== viewerOrigin || event.source !== frame.contentWindow) return;
    const data = event.data;
    if (!data || data.source !== 'dicom-viewer') return;
    const { source, type, ...detail } = data;
    show(`${type} ${JSON.stringify(detail)}`);
    if (type === 'sliceChanged') {
      state.index = data.index;
      state.count = data.count;
      document.getElementById('slice-index').value = String(data.index);
    }
    if (type === 'seriesChanged' && !state.series.includes(data.seriesInstanceUID)) {
      state.series.push(data.seriesInstanceUID);
      seriesSelect.append(new Option(data.description || data.seriesInstanceUID, data.seriesInstanceUID));
    }
  });

  function send(message) {
    frame.contentWindow.postMessage({ source: 'dicom-viewer', ...message }, viewerOrigin);
    show(`→ ${JSON.stringify(message)}`);
  }

  const commands = {
    prev: () => send({ type: 'setSlice', index: Math.max(0, state.index - 1) }),
    next: () => send({ type: 'setSlice', index: state.index + 1 }),
    setSlice: () => send({ type: 'setSlice', index: Number(document.getElementById('slice-index').value) }),
    setWindow: () => send({
      type: 'setWindow',
      center: Number(document.getElementById('window-center').value),
      width: Number(document.getElementById('window-width').value),
    }),
    resetView: () => send({ type: 'resetView' }),
    openSeries: () => send({ type: 'openSeries', seriesInstanceUID: seriesSelect.value }),
  };
  for (const button of document.querySelectorAll('[data-command]')) {
    button.addEventListener('click', () => commands[button.dataset.command]());
  }
}());
