// @ts-check
/** Entry point of the study page: the viewer on the study named by the page. */
import { onSignedOut } from './api.js';
import { current, loadStudy, sessionEnded } from './studyviewer.js';
import { initShare } from './share.js';

const root = /** @type {HTMLElement} */ (document.getElementById('viewer'));
onSignedOut(sessionEnded);
const m = /series=([^&]+)/.exec(location.hash);
loadStudy(root.dataset.apiUrl || '', m ? decodeURIComponent(m[1]) : '');
initShare(current);
