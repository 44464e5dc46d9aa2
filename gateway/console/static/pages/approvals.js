// Approvals: the tool calls waiting for a person (or, filtered, those decided), each with Approve / Deny /
// Edit; the list follows the tenant's runs as they park and finish (GET /v1/events).

import { get } from "../api.js";
import { fill, h } from "../dom.js";
import { approvalCard } from "../approvals.js";
import { live } from "../poll.js";

const STATUSES = ["pending", "approved", "denied", "edited", "expired", "withdrawn", "all"];

export async function render(view, { args, signal }) {
  const chosen = STATUSES.includes(args[0]) ? args[0] : "pending";
  const filter = h("select", { id: "approval-status", name: "status" }, STATUSES.map((s) => h("option", { value: s, selected: s === chosen }, s)));
  filter.addEventListener("change", () => {
    location.hash = `#/approvals/${filter.value}`;
  });
  const list = h("ul", { id: "approvals", class: "approvals list" });
  // decided on this page: its decided card, kept in sight until the page is left. Held here, not looked up
  // in the list: a refresh whose read began before the decision would otherwise put the pending card back
  const decidedHere = new Map();
  const onDecided = (a, card) => decidedHere.set(a.id, card);
  const show = async () => {
    const { approvals } = await get(`/v1/approvals?status=${chosen}`, { signal });
    const shown = new Map([...list.querySelectorAll("[data-approval-id]")].map((card) => [card.dataset.approvalId, card]));
    const kept = (a) => {
      if (decidedHere.has(a.id)) return decidedHere.get(a.id);
      const card = shown.get(a.id); // one being decided keeps what was typed into it
      return card && card.dataset.status === a.status ? card : approvalCard(a, { onDecided });
    };
    const listed = new Set(approvals.map((a) => a.id));
    const mine = [...decidedHere].filter(([id]) => !listed.has(id)).map(([, card]) => card);
    const cards = [...mine, ...approvals.map(kept)];
    fill(
      list,
      cards.length
        ? cards
        : h("li", { class: "muted" }, chosen === "pending" ? "Nothing waits for approval." : `No ${chosen} approvals.`),
    );
  };
  await show();
  fill(
    view,
    h("h1", {}, "Approvals"),
    h("p", { class: "muted" }, "Tool calls a run waits on. Approve runs exactly that call; a denial's reason is what the model is told; an edit runs it with the arguments you give (and is recorded as edited)."),
    h("form", { class: "inline" }, h("label", {}, "Show ", filter)),
    list,
  );
  // a run parked (a new approval) or ended (an expiry decided one): read the list again
  live("executor.waiting,executor.finished", signal, show, { fallbackMs: 3000 });
}
