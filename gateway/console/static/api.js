// The public /v1 API with the signed-in key (Authorization: Bearer), and server-sent events read from
// fetch() (EventSource cannot send the header).

const KEY = "agentbus.key";

export function key() {
  return sessionStorage.getItem(KEY);
}

export function signIn(value) {
  sessionStorage.setItem(KEY, value);
}

export function signOut() {
  sessionStorage.clear(); // the key, and whatever the pages kept of the tenant's data
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || String(status);
    this.details = error.details || {};
  }
}

function headers(extra = {}) {
  const out = { ...extra };
  const k = key();
  if (k) out.Authorization = `Bearer ${k}`;
  return out;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("agentbus:unauthorized", { detail: error }));
  return error;
}

/** A JSON call: resolves to the decoded body (null for 204), rejects with ApiError. */
export async function api(method, path, body, { signal, accept = "application/json" } = {}) {
  const init = { method, headers: headers({ Accept: accept }), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);

/** Items a list's page holds in the console ("More" reads the next). */
export const PAGE = 50;

/** `path`'s list, a page at a time: `pages(path, key)(after)` is [the page's `key` items, its `next_after`]
 * (`path` already has its query, `limit` among it). */
export function pages(path, key) {
  return async (after) => {
    const page = await get(`${path}&after=${encodeURIComponent(after)}`);
    return [page[key], page.next_after];
  };
}

/**
 * Read a server-sent event stream: onEvent({id, event, data}) for each message (data parsed as JSON when it
 * is); onOpen() once the stream is open. Resolves when it ends; rejects with ApiError when the answer is not a
 * stream.
 */
export async function stream(method, path, { body, signal, onEvent, onOpen, lastEventId } = {}) {
  const init = { method, headers: headers({ Accept: "text/event-stream" }), signal };
  if (lastEventId) init.headers["Last-Event-ID"] = String(lastEventId);
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  onOpen?.();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = parse(block);
      if (message) onEvent(message);
    }
  }
}

function parse(block) {
  const message = { id: null, event: "message", data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  message.data = data.join("\n");
  try {
    message.data = JSON.parse(message.data);
  } catch {
    /* not JSON: kept as text */
  }
  return message;
}
