// The REST client: every call of the dashboard goes through here, with the
// bearer token kept in localStorage. Errors become ApiError carrying the
// server's {code, message, param}.
import { serverClock } from './logic.js';

const TOKEN_KEY = 'lorad.token';
// every answer's Date header moves it; elapsed times are measured with it
const clock = serverClock();
export const serverNow = () => clock.now(Date.now() / 1000);

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
export function setToken(t) {
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives for this page only */ }
  memToken = t || '';
  window.dispatchEvent(new CustomEvent('lorad:token'));
}
let memToken = '';
const token = () => getToken() || memToken;

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.param = e.param || null;
    this.error = e; // the whole error object (errors: [{line, message}] for uploads)
  }
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '') continue;
    q.set(k, Array.isArray(v) ? v.join(',') : String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

function authFailed() {
  window.dispatchEvent(new CustomEvent('lorad:unauthorized'));
}

async function parse(res) {
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return { error: { message: text.slice(0, 300) } }; }
}

export async function api(path, { method = 'GET', body, params, signal } = {}) {
  if (!token()) { authFailed(); throw new ApiError(401, { error: { code: 'unauthorized', message: 'enter an API token' } }); }
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path + query(params), {
    method, headers, signal, cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  clock.sample(res.headers.get('Date'), Date.now() / 1000);
  const data = await parse(res);
  if (!res.ok) {
    if (res.status === 401) authFailed();
    throw new ApiError(res.status, data);
  }
  return data;
}

// Dataset upload as multipart with progress (fetch cannot report upload progress).
export function upload(path, file, fields, onProgress) {
  return new Promise((resolve, reject) => {
    if (!token()) { authFailed(); reject(new ApiError(401, { error: { message: 'enter an API token' } })); return; }
    const fd = new FormData();
    for (const [k, v] of Object.entries(fields || {})) if (v) fd.append(k, v);
    fd.append('file', file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.setRequestHeader('Authorization', `Bearer ${token()}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let data = null;
      try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { data = { error: { message: xhr.responseText.slice(0, 300) } }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else { if (xhr.status === 401) authFailed(); reject(new ApiError(xhr.status, data)); }
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { message: 'network error: is lorad running?' } }));
    xhr.send(fd);
  });
}

// A download that needs the bearer token, which a plain link cannot send.
export async function download(path, filename) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, cache: 'no-store' });
  if (!res.ok) throw new ApiError(res.status, await parse(res));
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
