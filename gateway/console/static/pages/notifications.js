// Notifications: the tenant's in-app channel, newest first: what tasks and research jobs sent it in the
// last 24 hours (GET /v1/notifications), then each new one as it is sent (/v1/notifications/events).

import { get, stream } from "../api.js";
import { fill, h, link, when } from "../dom.js";

const enc = encodeURIComponent;
const PAGES = 5; // of 200, oldest first; the live stream, resumed after the last one read, brings any more

export async function render(view, { signal }) {
  const list = h("ol", { id: "notifications", class: "events" });
  const empty = h("p", { class: "muted", id: "notifications-empty" }, "No notifications in the last 24 hours.");
  const shown = new Set();
  const add = (n) => {
    if (shown.has(n.id)) return;
    shown.add(n.id);
    empty.hidden = true;
    list.prepend(card(n));
  };
  let last = null;
  let after = null;
  for (let i = 0; i < PAGES; i++) {
    const page = await get(`/v1/notifications?limit=200${after === null ? "" : `&after=${after}`}`, { signal });
    for (const n of page.notifications) add(n);
    last = page.notifications.at(-1)?.id ?? last;
    after = page.next_after;
    if (after === null || after === undefined) break;
  }
  empty.hidden = shown.size > 0;
  fill(view, h("h1", {}, "Notifications"), h("p", { class: "muted" }, "The in-app channel of your tasks and research jobs."), empty, list);
  stream("GET", "/v1/notifications/events", {
    signal,
    lastEventId: last,
    onEvent(message) {
      if (message.event !== "in_app_notification") return;
      add({ ...message.data, id: Number(message.id), published_at: null });
    },
  }).catch((e) => {
    if (e.name !== "AbortError" && !signal.aborted) console.warn("no live notifications", e.message);
  });
}

function card(n) {
  const from = n.task_id
    ? link(`task-runs/${enc(n.task_run_id)}`, "task run")
    : link(`research/${enc(n.task_run_id)}`, "research job");
  return h(
    "li",
    { class: "notification", dataset: { id: n.id } },
    h("strong", {}, n.title),
    " · ",
    from,
    " · ",
    h("span", { class: "muted" }, n.published_at ? when(n.published_at) : "just now"),
    h("div", { class: "content" }, n.body),
  );
}
