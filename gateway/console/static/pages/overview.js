// Overview: the actors and their health, the consumers' backlog, the dead-letter depth, and runs, tokens
// and cost per day and per agent as charts (GET /v1/usage?group_by=day|agent).

import { get } from "../api.js";
import { bars } from "../chart.js";
import { fill, h, link, pre, status, table, usd, when } from "../dom.js";
import { every, live } from "../poll.js";

const enc = encodeURIComponent;

export async function render(view, { signal }) {
  const since = new Date(Date.now() - 13 * 86_400_000).toISOString().slice(0, 10); // the last 14 days
  const state = platformState(signal); // it asks every replica (about half a second): shown when it answers
  const read = () => // the totals and the usage by day and by agent: on opening, and again on each event
    Promise.all([
      totals(signal),
      get(`/v1/usage?group_by=day&from=${since}`, { signal }),
      get(`/v1/usage?group_by=agent&from=${since}`, { signal }),
    ]);
  const [stats, byDay, byAgent] = await read();
  const health = h("section", { id: "health" }, h("h2", {}, "Actors"), h("p", { class: "muted" }, "Asking every replica…"));
  const showHealth = (s) => {
    if (s.error) return fill(health, h("p", { class: "error" }, `Status unavailable: ${s.error.message}`));
    const actors = Object.entries(s.actors || {});
    const dlq = Object.entries(s.dead_letters || {});
    fill(
      health,
      h("h2", {}, "Actors"),
      table(actors, [
        ["Actor", ([name]) => name],
        ["Health", ([, a]) => status(a.ok ? "ok" : "failed")],
        ["Replicas", ([, a]) => (a.replicas || []).map((r) => h("div", {}, `${r.instance} `, status(r.ok ? "ok" : "failed")))],
      ], { id: "actors" }),
      h("h2", {}, "Consumer backlog"),
      table(s.consumers || [], [
        ["Stream", (c) => c.stream],
        ["Consumer", (c) => c.consumer],
        ["Pending", (c) => c.pending],
        ["Awaiting ack", (c) => c.ack_pending],
        ["Redelivered", (c) => c.redelivered],
      ], { id: "consumers" }),
      s.models && Object.keys(s.models).length
        ? [h("h2", {}, "Models"), h("details", { id: "models" }, h("summary", {}, "The models' circuit breakers"), pre(s.models))]
        : null,
      h("h2", {}, "Dead letters"),
      dlq.length
        ? table(dlq, [["Actor", ([name]) => link(`dlq/${enc(name)}`, name)], ["Depth", ([, n]) => n]], { id: "dlq-depth" })
        : h("p", { class: "muted", id: "dlq-depth" }, "None."),
    );
  };
  const kpis = h("div", { class: "kpis", id: "stats" });
  const showStats = (st) =>
    st
      ? fill(
          kpis,
          kpi("Conversations", st.conversations),
          kpi("Tasks", `${st.tasks.enabled} / ${st.tasks.total}`, "enabled / all"),
          kpi("Runs", st.runs.total, `${st.runs.last_24h} in 24 h · ${st.rates.runs_per_hour_24h.toFixed(1)}/h`),
          kpi("Runs by status", Object.entries(st.runs.by_status).map(([k, n]) => `${k} ${n}`).join(" · ") || "—"),
          kpi("Tokens", st.tokens.total, `${st.tokens.input} in · ${st.tokens.output} out · ${Math.round(st.rates.tokens_per_hour_24h)}/h`),
          kpi("Cost", usd(st.cost_usd)),
        )
      : fill(kpis, h("p", { class: "muted" }, "Totals unavailable (GET /v1/stats did not answer)."));
  showStats(stats);
  const feed = h("ol", { id: "live-events", class: "events", reversed: true });
  const charts = h("div", { class: "grid", id: "charts" });
  const showCharts = (day, agent) => fill(charts, usageCharts(day, agent));
  showCharts(byDay, byAgent);
  fill(
    view,
    h("h1", {}, "Overview"),
    kpis,
    health,
    h("h2", {}, "Usage, last 14 days"),
    charts,
    h("h2", {}, "Live events"),
    h("p", { class: "muted" }, "The tenant's task, run, research and delivery events as they happen (GET /v1/events)."),
    feed,
  );
  state.then(showHealth);
  every(5000, signal, async () => showHealth(await platformState(signal)));
  const reload = async () => {
    const [st, day, agent] = await read();
    showStats(st);
    showCharts(day, agent);
  };
  live("", signal, reload, {
    fallbackMs: 10_000,
    onEvent({ data }) {
      if (!data || !data.type) return;
      feed.prepend(h("li", {}, h("span", { class: "muted" }, `${when(data.published_at)} `), status(data.type), ` ${data.entity_id || ""} `, h("code", {}, data.subject)));
      while (feed.children.length > 30) feed.lastChild.remove();
    },
  });
}

function unpriced(rollup) {
  return rollup.groups.some((g) => g.usage.cost_usd === null && g.usage.requests > 0);
}

function kpi(label, value, sub = "") {
  return h("div", { class: "kpi" }, h("span", { class: "muted" }, label), h("strong", {}, String(value)), sub ? h("span", { class: "muted" }, sub) : null);
}

/** GET /v1/stats, or null where it did not answer (the totals say so; the rest of the page still shows). */
function totals(signal) {
  return get("/v1/stats", { signal }).catch(() => null);
}

/** GET /v1/status, or the error it answered with (shown in place of the health and the counts). */
async function platformState(signal) {
  try {
    return await get("/v1/status", { signal });
  } catch (e) {
    return { error: e };
  }
}

function usageCharts(day, agent) {
  const days = day.groups.map((g) => ({ key: g.key.slice(5), runs: g.runs, usage: g.usage }));
  const agents = agent.groups.map((g) => ({ key: g.key, runs: g.runs, usage: g.usage }));
  const chart = (points, title, value, format) =>
    h("div", { class: "chart" }, bars(points.map((p) => ({ key: p.key, value: value(p) })), { title, format }));
  const tokensOf = (p) => p.usage.input_tokens + p.usage.output_tokens;
  const costOf = (p) => p.usage.cost_usd ?? p.usage.priced_cost_usd ?? 0;
  return [
    chart(days, "Runs per day", (p) => p.runs, String),
    chart(days, "Tokens per day", tokensOf, String),
    chart(days, `Cost per day (USD${unpriced(day) ? ", priced part" : ""})`, costOf, (v) => v.toFixed(4)),
    chart(agents, "Runs per agent", (p) => p.runs, String),
    chart(agents, "Tokens per agent", tokensOf, String),
    chart(agents, `Cost per agent (USD${unpriced(agent) ? ", priced part" : ""})`, costOf, (v) => v.toFixed(4)),
  ];
}
