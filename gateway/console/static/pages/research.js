// Research: start a job; a job's live progress (phase, sub-runs, running totals) and, once it ends, its
// report rendered from Markdown by the gateway (raw HTML escaped) with the citations as links; a document.

import { PAGE, get, pages, post, stream } from "../api.js";
import { fill, h, link, pagedTable, pre, status, table, tokens, usd, when } from "../dom.js";

const enc = encodeURIComponent;
const ENDED = ["completed", "cancelled", "failed"];

export async function render(view, { page, args, signal }) {
  if (page === "documents") return documentPage(view, args[0], signal);
  if (args[0]) return job(view, args[0], signal);
  return list(view, signal);
}

async function list(view, signal) {
  const { jobs, next_after: nextAfter } = await get(`/v1/research?limit=${PAGE}`, { signal });
  const opener = h("input", { id: "job-id", placeholder: "a job id", size: 40 });
  const open = h("form", { class: "inline" }, opener, h("button", { type: "submit", class: "secondary" }, "Open job"));
  open.addEventListener("submit", (event) => {
    event.preventDefault();
    if (opener.value.trim()) location.hash = `#/research/${enc(opener.value.trim())}`;
  });
  fill(
    view,
    h("h1", {}, "Research"),
    startForm(),
    open,
    jobs.length
        ? pagedTable(jobs, nextAfter, pages(`/v1/research?limit=${PAGE}`, "jobs"), [
            ["Job", (j) => link(`research/${enc(j.id)}`, j.question.slice(0, 90))],
            ["Status", (j) => status(j.status)],
            ["Sub-runs", (j) => j.totals.subruns],
            ["Tokens", (j) => tokens(j.totals)],
            ["Cost", (j) => usd(j.totals.cost_usd)],
            ["Created", (j) => when(j.created_at)],
          ], { id: "jobs" })
        : h("p", { class: "muted" }, "No research jobs yet."),
  );
}

function startForm() {
  const question = h("textarea", { id: "research-question", rows: 3, required: true });
  const sources = ["documents", "web"].map((s) => h("input", { type: "checkbox", value: s, checked: s === "documents" }));
  const subtasks = h("input", { id: "research-subtasks", type: "number", min: 1, max: 50, value: 4 });
  const depth = h("input", { id: "research-depth", type: "number", min: 1, max: 5, value: 1 });
  const error = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    { id: "new-research", class: "card stack" },
    h("h2", {}, "New research job"),
    h("label", {}, "question ", question),
    h("div", { class: "row" }, "sources: ", sources.map((s) => h("label", {}, s, s.value))),
    h("label", {}, "at most sub-questions ", subtasks),
    h("label", {}, "rounds (depth) ", depth),
    h("button", { type: "submit" }, "Start"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const made = await post("/v1/research", {
        question: question.value,
        sources: sources.filter((s) => s.checked).map((s) => s.value),
        max_subtasks: Number(subtasks.value),
        max_depth: Number(depth.value),
      });
      location.hash = `#/research/${enc(made.id)}`;
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}`;
    }
  });
  return form;
}

async function job(view, id, signal) {
  let j = await get(`/v1/research/${enc(id)}`, { signal });
  const phase = h("p", { id: "research-phase" });
  const totals = h("p", { id: "research-totals" });
  const subruns = h("div", { id: "research-subruns" });
  const events = h("ol", { id: "research-events", class: "events" });
  const report = h("section", { id: "research-report" });
  const error = h("p", { class: "error", role: "alert" });
  const rows = new Map(); // run id -> sub-run as last seen
  const showTotals = (t) => {
    totals.textContent = `${t.subruns} sub-runs · ${t.requests} requests · ${tokens(t)} · ${usd(t.cost_usd)}`;
  };
  const showSubruns = () => {
    fill(
      subruns,
      rows.size
        ? table([...rows.values()], [
            ["Sub-run", (s) => link(`runs/${enc(s.run_id)}`, s.run_id)],
            ["Kind", (s) => s.kind],
            ["Depth", (s) => s.depth || "—"],
            ["Question", (s) => s.question || "—"],
            ["Status", (s) => status(s.status)],
            ["Tokens", (s) => tokens(s.usage)],
          ])
        : h("p", { class: "muted" }, "No sub-runs yet."),
    );
  };
  const showPhase = (value, depth) => {
    fill(phase, "Phase: ", status(value), depth ? ` round ${depth}` : "", j.stopped_by ? ` · stopped by ${j.stopped_by}` : "");
  };
  for (const s of j.subruns) rows.set(s.run_id, s);
  const cancel = h("button", { type: "button", id: "cancel-research", class: "danger" }, "Cancel");
  cancel.addEventListener("click", async () => {
    try {
      await post(`/v1/research/${enc(id)}/cancel`);
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}`;
    }
  });
  fill(
    view,
    h("p", {}, link("research", "← Research")),
    h("h1", {}, j.question),
    h("p", { class: "muted" }, `job ${j.id} · agent ${j.agent} · sources ${j.sources.join(", ")} · created ${when(j.created_at)} · `, link(`runs/${enc(j.id)}`, "run tree")),
    ENDED.includes(j.status) ? null : cancel,
    error,
    phase,
    totals,
    h("h2", {}, "Sub-runs"),
    subruns,
    h("h2", {}, "Progress (live)"),
    events,
    report,
  );
  showPhase(j.status);
  showTotals(j.totals);
  showSubruns();
  const finish = async () => {
    j = await get(`/v1/research/${enc(id)}`, { signal });
    for (const s of j.subruns) rows.set(s.run_id, s);
    showSubruns();
    showPhase(j.status);
    showTotals(j.totals);
    cancel.remove();
    await showReport(report, j, signal);
  };
  if (ENDED.includes(j.status)) {
    await finish();
    return;
  }
  stream("GET", `/v1/research/${enc(id)}/events`, {
    signal,
    onEvent({ id: seq, event, data }) {
      let text = "";
      if (event === "phase") {
        showPhase(data.status, data.depth);
        text = data.status + (data.depth ? ` round ${data.depth}` : "");
      } else if (event === "subrun_started") {
        rows.set(data.run_id, { ...(rows.get(data.run_id) || {}), ...data, status: "running", usage: null });
        showSubruns();
        text = `${data.kind} ${data.run_id}${data.question ? `: ${data.question}` : ""}`;
      } else if (event === "subrun_finished") {
        rows.set(data.run_id, { ...(rows.get(data.run_id) || {}), ...data });
        showSubruns();
        showTotals(data.totals);
        text = `${data.kind} ${data.run_id} ${data.status}`;
      } else if (event === "research_finished") {
        showTotals(data.totals);
        text = data.status + (data.stopped_by ? ` (stopped by ${data.stopped_by})` : "") + (data.error ? `: ${data.error}` : "");
      }
      events.append(h("li", { dataset: { event } }, h("span", { class: "muted" }, `#${seq} `), status(event), " ", text));
    },
  })
    .then(() => (signal.aborted ? null : finish()))
    .catch((e) => {
      if (e.name !== "AbortError") error.textContent = `progress: ${e.message}`;
    });
}

async function showReport(section, j, signal) {
  if (j.report === null || j.report === undefined) {
    fill(section, h("h2", {}, "Report"), h("p", { class: "muted" }, j.error ? `No report: ${j.error}` : "No report."));
    return;
  }
  // HTML the gateway rendered from the Markdown with raw HTML escaped (markdown-it-py, html=False), so it is
  // the one place the console inserts HTML; the page's CSP runs no inline script in any case.
  const html = await get(`/v1/console/research/${enc(j.id)}/report`, { signal, accept: "text/html" });
  const body = h("div", { class: "report", id: "report-body" });
  body.innerHTML = html;
  for (const a of body.querySelectorAll("a")) {
    const href = a.getAttribute("href") || "";
    if (!/^(https?:|#\/)/.test(href)) a.removeAttribute("href"); // markdown-it already refuses javascript: etc.
  }
  fill(
    section,
    h("h2", {}, "Report"),
    body,
    h("h3", {}, "Citations"),
    j.citations.length
      ? h("ul", { id: "citations" }, j.citations.map((c) => h(
          "li",
          {},
          citationLink(c),
          ` ${c.title || ""} (${c.kind}${c.verified ? "" : ", not read by this job"})`,
        )))
      : h("p", { class: "muted" }, "None."),
    h("details", {}, h("summary", {}, "Markdown source"), pre(j.report)),
  );
}

function citationLink(c) {
  if (c.ref.startsWith("doc:")) return link(`documents/${enc(c.ref.slice(4))}`, c.ref, { class: "citation" });
  if (c.ref.startsWith("run:")) return link(`runs/${enc(c.ref.slice(4))}`, c.ref, { class: "citation" });
  if (/^https?:\/\//.test(c.ref)) return h("a", { href: c.ref, class: "citation", rel: "noopener noreferrer", target: "_blank" }, c.ref);
  return h("span", {}, c.ref);
}

async function documentPage(view, id, signal) {
  const d = await get(`/v1/documents/${enc(id)}`, { signal });
  fill(
    view,
    h("p", {}, link("research", "← Research")),
    h("h1", {}, d.title || d.id),
    h("p", { class: "muted" }, `document ${d.id} · ${d.content_type} · added ${when(d.created_at)}`),
    pre(d.text ?? d.content ?? "", { id: "document-text" }),
  );
}
