// The REST API from the browser: Bearer key from localStorage, errors as ApiError with the API's message.

const KEY = "sgft.apiKey";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
  /** [{line, message}] when the API listed problems (dataset validation), else []. */
  get problems() {
    const err = (this.body && this.body.error) || {};
    const list = err.problems || err.details || (err.report && err.report.problems);
    if (Array.isArray(list)) return list.map((p) => (typeof p === "string" ? { line: 0, message: p } : p));
    // Fall back to the human text "name: line 3: missing key 'label'; line 9: bad JSON".
    const parts = String(err.message || "").split(/;\s*/);
    return parts
      .map((part) => part.match(/line (\d+):\s*(.*)$/))
      .filter(Boolean)
      .map((m) => ({ line: Number(m[1]), message: m[2] }));
  }
}

export const auth = {
  get key() { return localStorage.getItem(KEY) || ""; },
  set key(value) { if (value) localStorage.setItem(KEY, value); else localStorage.removeItem(KEY); },
};

/** Listeners called when the API says the key is not valid (the app signs out). */
export const onUnauthorized = new Set();

async function send(method, path, { json, form, params, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  const headers = { Authorization: `Bearer ${key ?? auth.key}` };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, `Cannot reach the service: ${err.message}`, null);
  }
  if (!response.ok) {
    let parsed = null;
    try { parsed = await response.json(); } catch { /* not JSON */ }
    const err = parsed && parsed.error;
    const message = (err && err.message) || (parsed && parsed.detail && JSON.stringify(parsed.detail))
      || `${response.status} ${response.statusText}`;
    if (response.status === 401 && key === undefined) onUnauthorized.forEach((fn) => fn());
    throw new ApiError(response.status, message, parsed);
  }
  return response;
}

const getJson = async (path, params) => (await send("GET", path, { params })).json();
const postJson = async (path, json) => (await send("POST", path, { json })).json();

export const api = {
  /** Check a key without storing it (sign-in). */
  check: (key) => send("GET", "/v1/fine_tuning/jobs", { params: { limit: 1 }, key }),
  models: () => getJson("/v1/models"),
  files: () => getJson("/v1/files"),
  file: (id) => getJson(`/v1/files/${encodeURIComponent(id)}`),
  upload: async (file, purpose = "fine-tune") => {
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    return (await send("POST", "/v1/files", { form })).json();
  },
  /** The file's bytes as a Blob (a fetch with the Bearer header: a plain link could not send it). */
  content: async (id) => (await send("GET", `/v1/files/${encodeURIComponent(id)}/content`)).blob(),
  jobs: (params) => getJson("/v1/fine_tuning/jobs", params),
  job: (id) => getJson(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`),
  hyperparameters: () => getJson("/v1/fine_tuning/jobs/hyperparameters"),
  createJob: (body) => postJson("/v1/fine_tuning/jobs", body),
  action: (id, action) => postJson(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`),
  // Oldest first, only those after the event id `after`: new points for the curves on every poll.
  events: (id, after, limit = 500) =>
    getJson(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events`, { after, limit, order: "asc" }),
  checkpoints: (id) => getJson(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints`, { limit: 100 }),
  model: (name) => getJson(`/v1/models/${encodeURIComponent(name)}`),
  predict: (model, input) => postJson("/v1/predictions", { model, input }),
  /** A streamed chat completion: `onText(piece)` per token as it arrives; resolves with the whole reply. */
  chat: async (body, onText) => {
    const response = await send("POST", "/v1/chat/completions", { json: { ...body, stream: true } });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let reply = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return reply;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (line === "[DONE]") return reply;
        const chunk = JSON.parse(line);
        if (chunk.error) throw new ApiError(200, chunk.error.message, chunk);
        for (const choice of chunk.choices || []) {
          const piece = (choice.delta || {}).content;
          if (piece) { reply += piece; onText(piece); }
        }
      }
    }
  },
};
