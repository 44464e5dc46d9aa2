// Dead letters: per actor, with the reason, headers and payload; replay one (republished to its original
// subject) or discard it.

import { PAGE, api, get, pages, post } from "../api.js";
import { fill, h, link, more, pre, when } from "../dom.js";

const enc = encodeURIComponent;

export async function render(view, { args, signal }) {
  const actor = args[0] || "";
  const query = `/v1/dead-letters?limit=${PAGE}${actor ? `&actor=${enc(actor)}` : ""}`;
  const page = await get(query, { signal });
  const note = h("p", { id: "dlq-note", role: "status", class: "muted" });
  const actors = h("p", { id: "dlq-actors", class: "row" }, link("dlq", "all", { class: actor ? "" : "active" }));
  // the counts per actor come from GET /v1/status (it asks every replica: slower), filled in when they arrive
  counts(signal).then((found) => {
    for (const [name, n] of Object.entries(found)) {
      actors.append(link(`dlq/${enc(name)}`, `${name} (${n})`, { class: name === actor ? "active" : "" }));
    }
  }, () => {});
  const letters = page.dead_letters;
  const cards = h("div", { id: "dead-letters" }, letters.map((d) => letter(d, note)));
  fill(
    view,
    h("h1", {}, actor ? `Dead letters of ${actor}` : "Dead letters"),
    actors,
    note,
    letters.length ? cards : h("p", { class: "muted", id: "dead-letters" }, "No dead letters."),
    more("dead-letters-more", page.next_after, pages(query, "dead_letters"), (found) => cards.append(...found.map((d) => letter(d, note)))),
  );
}

async function counts(signal) {
  const state = await get("/v1/status", { signal }).catch(() => null);
  if (state?.dead_letters) return state.dead_letters;
  // no GET /v1/status here: count them from the list (the newest 200)
  const all = (await get("/v1/dead-letters?limit=200", { signal })).dead_letters;
  const found = {};
  for (const d of all) found[d.actor] = (found[d.actor] || 0) + 1;
  return found;
}

function letter(d, note) {
  const card = h(
    "article",
    { class: "card dead-letter", dataset: { id: d.id } },
    h("h3", {}, `#${d.id} · ${d.actor} · `, h("code", {}, d.subject)),
    h("p", {}, h("strong", {}, "Reason: "), d.reason),
    h("p", { class: "muted" }, `${d.deliveries} deliveries · dead-lettered ${when(d.dead_lettered_at)}`),
    h("details", {}, h("summary", {}, "Headers"), pre(d.headers)),
    h("details", { open: true }, h("summary", {}, "Payload"), pre(d.payload !== null && d.payload !== undefined ? d.payload : d.payload_text ?? "")),
  );
  const error = h("p", { class: "error", role: "alert" });
  const replay = h("button", { type: "button", class: "replay" }, "Replay");
  const discard = h("button", { type: "button", class: "discard danger" }, "Discard");
  replay.addEventListener("click", async () => {
    try {
      const done = await post(`/v1/dead-letters/${enc(d.id)}/replay`);
      card.remove();
      note.textContent = `Replayed #${done.id} to ${done.subject} (stream sequence ${done.replayed_as}).`;
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}`;
    }
  });
  discard.addEventListener("click", async () => {
    if (!confirm(`Discard dead letter #${d.id}? It cannot be replayed afterwards.`)) return;
    try {
      await api("DELETE", `/v1/dead-letters/${enc(d.id)}`);
      card.remove();
      note.textContent = `Discarded #${d.id}.`;
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}`;
    }
  });
  card.append(h("div", { class: "row" }, replay, discard), error);
  return card;
}
