// Runs: the list; a run with its tree (pipeline steps, subagents, research sub-runs), its live event
// stream, its usage and cost (own, and with everything under it); cancel.

import { ApiError, PAGE, get, pages, post, stream } from "../api.js";
import { approvalsInline } from "../approvals.js";
import { fill, h, link, pagedTable, status, table, tokens, usd, when } from "../dom.js";

const enc = encodeURIComponent;
const ENDED = ["completed", "failed", "cancelled"];

export async function render(view, { args, signal }) {
  if (args[0]) return run(view, args[0], signal);
  return list(view, signal);
}

function opener() {
  const input = h("input", { id: "run-id", placeholder: "a run id", size: 40 });
  const form = h("form", { class: "inline" }, input, h("button", { type: "submit" }, "Open run"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) location.hash = `#/runs/${enc(input.value.trim())}`;
  });
  return form;
}

async function list(view, signal) {
  const { runs, next_after: nextAfter } = await get(`/v1/runs?limit=${PAGE}`, { signal });
  fill(view, h("h1", {}, "Runs"), opener(), runs.length ? runTable(runs, nextAfter) : h("p", { class: "muted" }, "No runs yet."));
}

function runTable(runs, nextAfter) {
  return pagedTable(
    runs,
    nextAfter,
    pages(`/v1/runs?limit=${PAGE}`, "runs"),
    [
      ["Run", (r) => link(`runs/${enc(r.id)}`, r.id)],
      ["Agent", (r) => r.agent],
      ["Status", (r) => status(r.status)],
      ["Model", (r) => r.model],
      ["Tokens", (r) => tokens(r.total_usage || r.usage)],
      ["Cost", (r) => usd((r.total_usage || r.usage)?.cost_usd)],
      ["Created", (r) => when(r.created_at)],
      ["From", (r) => r.conversation_id ? link(`chat/${enc(r.conversation_id)}`, "conversation") : r.task_id ? link(`tasks/${enc(r.task_id)}`, "task") : r.parent_run_id ? link(`runs/${enc(r.parent_run_id)}`, "parent") : "—"],
    ],
    { id: "runs" },
  );
}

async function run(view, id, signal) {
  let record = null;
  try {
    record = await get(`/v1/runs/${enc(id)}`, { signal });
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
  let tree = null;
  try {
    tree = await get(`/v1/runs/${enc(id)}/tree`, { signal });
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
  if (!record && !tree) throw new ApiError(404, { error: { code: "not_found", message: `no run ${id}` } });
  const summary = h("div", { id: "run-summary" });
  const events = h("ol", { id: "run-events", class: "events" });
  const output = h("div", { id: "run-output", class: "content" });
  const approvals = approvalsInline({ id: "run-approvals" });
  const error = h("p", { class: "error", role: "alert" });
  const showSummary = (r) => {
    fill(
      summary,
      table([r], [
        ["Status", (x) => status(x.status)],
        ["Agent", (x) => x.agent],
        ["Model", (x) => x.model],
        ["Attempt", (x) => x.attempt],
        ["Created", (x) => when(x.created_at)],
        ["Finished", (x) => when(x.finished_at)],
        ["Own usage", (x) => `${tokens(x.usage)} · ${x.usage.requests} requests · ${x.usage.tool_calls} tool calls · ${usd(x.usage.cost_usd)}`],
        ["With sub-runs", (x) => `${tokens(x.total_usage)} · ${usd(x.total_usage?.cost_usd)}`],
      ]),
      r.error ? h("p", { class: "error" }, r.error) : null,
      h(
        "p",
        {},
        r.conversation_id ? ["Conversation ", link(`chat/${enc(r.conversation_id)}`, r.conversation_id), " "] : null,
        r.task_id ? ["Task ", link(`tasks/${enc(r.task_id)}`, r.task_id), " "] : null,
        r.parent_run_id ? ["Parent ", link(`runs/${enc(r.parent_run_id)}`, r.parent_run_id)] : null,
      ),
    );
  };
  const cancel = h("button", { type: "button", id: "cancel-run", class: "danger" }, "Cancel");
  cancel.addEventListener("click", async () => {
    try {
      await post(`/v1/runs/${enc(id)}/cancel`);
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}`;
    }
  });
  fill(
    view,
    h("p", {}, link("runs", "← Runs")),
    h("h1", {}, record ? `Run ${id}` : `Research job ${id}`),
    record && !ENDED.includes(record.status) ? cancel : null,
    error,
    record ? summary : h("p", {}, link(`research/${enc(id)}`, "The research job's page")),
    h("h2", {}, "Tree"),
    h("div", { id: "run-tree", class: "tree" }, tree ? h("ul", {}, node(tree, id)) : h("p", { class: "muted" }, "—")),
    record ? [approvals.node, h("h2", {}, "Output"), output, h("h2", {}, "Events (live)"), events] : null,
  );
  if (!record) return;
  showSummary(record);
  follow(id, events, output, approvals, signal).then(async () => {
    if (signal.aborted) return;
    const latest = await get(`/v1/runs/${enc(id)}`, { signal });
    showSummary(latest);
    if (ENDED.includes(latest.status)) cancel.remove();
  }).catch((e) => {
    if (e.name !== "AbortError") error.textContent = `events: ${e.message}`;
  });
}

/** A run's output as text: structured output (a pipeline's steps, an output type) indented, prose as it is. */
function readable(value) {
  if (typeof value !== "string" || !/^\s*[[{]/.test(value)) return value ?? "";
  try {
    return JSON.stringify(JSON.parse(value), null, 2);
  } catch {
    return value;
  }
}

function node(n, current) {
  const label = n.kind === "research_job"
    ? ["research job ", link(`research/${enc(n.id)}`, n.id)]
    : [n.id === current ? h("strong", {}, n.id) : link(`runs/${enc(n.id)}`, n.id), " ", status(n.status), ` ${n.agent} · ${tokens(n.usage)} · ${usd(n.usage?.cost_usd)}`];
  return h("li", {}, label, n.children?.length ? h("ul", {}, n.children.map((c) => node(c, current))) : null);
}

async function follow(id, events, output, approvals, signal) {
  await stream("GET", `/v1/runs/${enc(id)}/events`, {
    signal,
    onEvent({ id: seq, event, data }) {
      let text = "";
      if (event === "delta") {
        output.append(data.text);
        text = JSON.stringify(data.text);
      } else if (event === "started") {
        if (data.attempt > 1) output.textContent = "";
        text = `${data.agent} on ${data.model}, attempt ${data.attempt ?? 1}`; // 1 is left out on the wire (the default)
      } else if (event === "tool_call") text = `${data.tool_name}(${data.args})`;
      else if (event === "tool_result") text = `${data.tool_name} → ${String(data.content).slice(0, 200)}`;
      else if (event === "usage") text = tokens(data.usage);
      else if (event === "completed") {
        output.textContent = readable(data.output);
        text = `${tokens(data.usage)} · ${usd(data.usage?.cost_usd)}`;
      } else if (event === "failed") text = `${data.error?.code}: ${data.error?.message}`;
      else if (event === "cancelled") text = data.reason || "";
      else if (event === "accepted") text = `position ${data.position}`;
      else if (event === "waiting") {
        approvals.waiting(data); // shown above the output, with their buttons
        text = (data.approvals || []).map((a) => `${a.tool_name} waits for approval`).join(", ") || `waits for ${data.waits?.length} event(s)`;
      } else if (event === "approval_decided") {
        approvals.decided(data);
        text = `${data.approval.tool_name} ${data.approval.status} by ${data.approval.decided_by}`;
      }
      events.append(h("li", { dataset: { event } }, h("span", { class: "muted" }, `#${seq} `), status(event), " ", text));
    },
  });
}
