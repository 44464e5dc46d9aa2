// Tasks: the list (type, schedule, next run, enabled), creating each type, run now, disable/enable, delete;
// a task's runs; a task run with its status, output, usage and delivery log, and retrying a failed delivery.

import { PAGE, api, get, pages, post } from "../api.js";
import { fill, h, link, pagedTable, pre, status, table, tokens, usd, when } from "../dom.js";
import { live } from "../poll.js";

const enc = encodeURIComponent;

export async function render(view, { page, args, signal }) {
  if (page === "task-runs") return taskRun(view, args[0], signal);
  if (args[0]) return task(view, args[0], signal);
  return list(view, signal);
}

function schedule(t) {
  if (t.task_type === "triggered") {
    const trigger = t.trigger_config || {};
    return trigger.subject ? `on ${trigger.subject}` : `webhook ${t.webhook_url || ""}`;
  }
  if (t.schedule_expression) return `cron ${t.schedule_expression} (${t.timezone})`;
  if (t.interval_seconds) return `every ${t.interval_seconds} s`;
  if (t.run_at) return `at ${when(t.run_at, t.timezone)}`;
  return t.task_type === "delegation" ? "once, now" : "—";
}

async function list(view, signal) {
  const [page, agents] = await Promise.all([get(`/v1/tasks?limit=${PAGE}`, { signal }), get("/v1/agents", { signal })]);
  const rows = pagedTable(
    page.tasks,
    page.next_after,
    pages(`/v1/tasks?limit=${PAGE}`, "tasks"),
    [
      ["Task", (t) => link(`tasks/${enc(t.id)}`, t.prompt.slice(0, 80) || t.id)],
      ["Type", (t) => t.task_type],
      ["Schedule", schedule],
      ["Next run", (t) => when(t.next_run_at, t.timezone)],
      ["Enabled", (t) => status(String(t.enabled))],
      ["Agent", (t) => t.pipeline ? `pipeline ${t.pipeline}` : t.agent],
    ],
    { id: "tasks" },
  );
  fill(
    view,
    h("h1", {}, "Tasks"),
    page.tasks.length ? rows : h("p", { class: "muted", id: "tasks" }, "No tasks yet."),
    createForm(agents),
  );
}

function createForm(agents) {
  const field = (label, input) => h("label", {}, label, input);
  const type = h(
    "select",
    { name: "task_type", id: "task-type" },
    ["delegation", "scheduled", "triggered"].map((t) => h("option", { value: t }, t)),
  );
  const prompt = h("textarea", { name: "prompt", id: "task-prompt", rows: 3, required: true });
  const agent = h(
    "select",
    { name: "agent", id: "task-agent" },
    h("optgroup", { label: "agents" }, agents.agents.map((a) => h("option", { value: a }, a))),
    agents.pipelines.length
      ? h("optgroup", { label: "pipelines" }, agents.pipelines.map((p) => h("option", { value: `pipeline:${p}` }, p)))
      : null,
  );
  const timing = h(
    "select",
    { id: "task-timing" },
    h("option", { value: "interval" }, "every N seconds"),
    h("option", { value: "cron" }, "cron expression"),
    h("option", { value: "run_at" }, "once, at a time"),
  );
  const cron = h("input", { id: "task-cron", placeholder: "*/5 * * * *" });
  const interval = h("input", { id: "task-interval", type: "number", min: 1, value: 3600 });
  const runAt = h("input", { id: "task-run-at", type: "datetime-local" });
  const tz = h("input", { id: "task-timezone", value: "UTC" });
  const subject = h("input", { id: "task-subject", placeholder: "empty: a signed webhook; else a NATS subject pattern" });
  const filter = h("input", { id: "task-filter", placeholder: '{"data.status": "failed"}' });
  const channels = ["in_app", "email", "webhook", "slack"].map((c) => h("input", { type: "checkbox", value: c, name: "channel" }));
  const email = h("input", { id: "task-email", type: "email", placeholder: "email address" });
  const hook = h("input", { id: "task-webhook", type: "url", placeholder: "https://… webhook URL" });
  const slack = h("input", { id: "task-slack", type: "url", placeholder: "https://hooks.slack.com/…" });
  const thread = h("input", { type: "checkbox", id: "task-thread" });
  const scheduled = h("fieldset", { id: "scheduled-fields" }, h("legend", {}, "Schedule"), timing, cron, interval, runAt, field("time zone ", tz));
  const triggered = h("fieldset", { id: "triggered-fields" }, h("legend", {}, "Trigger"), field("subject ", subject), field("filter (JSON) ", filter));
  const note = h("div", { id: "task-created", role: "status" });
  const error = h("p", { class: "error", role: "alert" });
  const sync = () => {
    scheduled.hidden = type.value !== "scheduled";
    triggered.hidden = type.value !== "triggered";
    cron.hidden = timing.value !== "cron";
    interval.hidden = timing.value !== "interval";
    runAt.hidden = timing.value !== "run_at";
  };
  type.addEventListener("change", sync);
  timing.addEventListener("change", sync);
  sync();
  const form = h(
    "form",
    { id: "new-task", class: "card stack" },
    h("h2", {}, "New task"),
    field("type ", type),
    field("prompt ", prompt),
    field("agent or pipeline ", agent),
    scheduled,
    triggered,
    h(
      "fieldset",
      {},
      h("legend", {}, "Deliver results to"),
      channels.map((c) => h("label", { class: "row" }, c, c.value)),
      email,
      hook,
      slack,
    ),
    h("label", { class: "row" }, thread, "one conversation for every run (thread)"),
    h("button", { type: "submit" }, "Create task"),
    error,
    note,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { task_type: type.value, prompt: prompt.value, thread: thread.checked };
    if (agent.value.startsWith("pipeline:")) body.pipeline = agent.value.slice("pipeline:".length);
    else body.agent = agent.value;
    if (type.value === "scheduled") {
      body.timezone = tz.value || "UTC";
      if (timing.value === "cron") body.schedule_expression = cron.value;
      else if (timing.value === "interval") body.interval_seconds = Number(interval.value);
      // a wall-clock time in the task's zone (the scheduler reads an offset-less run_at there), not the browser's
      else body.run_at = runAt.value ? (runAt.value.length === 16 ? `${runAt.value}:00` : runAt.value) : null;
    }
    if (type.value === "triggered") {
      body.trigger_config = {};
      if (subject.value.trim()) body.trigger_config.subject = subject.value.trim();
      if (filter.value.trim()) {
        try {
          body.trigger_config.filter = JSON.parse(filter.value);
        } catch (e) {
          error.textContent = `The filter is not JSON: ${e.message}`;
          return;
        }
      }
    }
    const chosen = channels.filter((c) => c.checked).map((c) => c.value);
    if (chosen.length) {
      body.notification_config = { channels: chosen };
      if (email.value) body.notification_config.email_address = email.value;
      if (hook.value) body.notification_config.webhook_url = hook.value;
      if (slack.value) body.notification_config.slack_webhook_url = slack.value;
    }
    try {
      const made = await post("/v1/tasks", body);
      const secrets = [];
      if (made.webhook_secret) secrets.push(h("p", {}, "Webhook secret (shown once): ", h("code", {}, made.webhook_secret)));
      if (made.notification_secret && body.notification_config) secrets.push(h("p", {}, "Notification signing secret (shown once): ", h("code", {}, made.notification_secret)));
      if (secrets.length) {
        fill(note, h("p", {}, "Created ", link(`tasks/${enc(made.id)}`, made.id)), secrets);
      } else {
        location.hash = `#/tasks/${enc(made.id)}`;
      }
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}${e.details?.errors ? ` ${JSON.stringify(e.details.errors)}` : ""}`;
    }
  });
  return form;
}

async function task(view, id, signal) {
  const t = await get(`/v1/tasks/${enc(id)}`, { signal });
  const runs = h("div", { id: "task-runs" });
  const error = h("p", { class: "error", role: "alert" });
  const action = (label, fn, attrs = {}) => {
    const b = h("button", { type: "button", ...attrs }, label);
    b.addEventListener("click", async () => {
      error.textContent = "";
      try {
        await fn();
      } catch (e) {
        error.textContent = `${e.code}: ${e.message}`;
      }
    });
    return b;
  };
  const refreshRuns = async () => {
    const page = await get(`/v1/tasks/${enc(id)}/runs?limit=50`, { signal });
    fill(
      runs,
      page.runs.length
        ? table(page.runs, [
            ["Run", (r) => link(`task-runs/${enc(r.id)}`, r.id)],
            ["Fired by", (r) => r.fired_by],
            ["Status", (r) => status(r.status)],
            ["Tokens", (r) => tokens(r.usage)],
            ["Started", (r) => when(r.started_at || r.created_at)],
            ["Output", (r) => (r.output || r.error || "").slice(0, 120)],
          ])
        : h("p", { class: "muted" }, "No runs yet."),
    );
  };
  fill(
    view,
    h("p", {}, link("tasks", "← Tasks")),
    h("h1", {}, t.id),
    h(
      "div",
      { class: "row" },
      action("Run now", async () => {
        await post(`/v1/tasks/${enc(id)}/execute`);
        await refreshRuns();
      }, { id: "run-now" }),
      t.enabled
        ? action("Disable", async () => { await post(`/v1/tasks/${enc(id)}/disable`); location.reload(); }, { id: "disable", class: "secondary" })
        : action("Enable", async () => { await post(`/v1/tasks/${enc(id)}/enable`); location.reload(); }, { id: "enable", class: "secondary" }),
      action("Delete", async () => {
        if (!confirm("Delete this task and its runs?")) return;
        await api("DELETE", `/v1/tasks/${enc(id)}`);
        location.hash = "#/tasks";
      }, { id: "delete", class: "danger" }),
    ),
    error,
    table([t], [
      ["Type", (x) => x.task_type],
      ["Schedule", schedule],
      ["Next run", (x) => when(x.next_run_at, x.timezone)],
      ["Enabled", (x) => status(String(x.enabled))],
      ["Agent", (x) => x.pipeline ? `pipeline ${x.pipeline}` : x.agent],
      ["Delivers to", (x) => (x.notification_config?.channels || []).join(", ") || "—"],
    ]),
    h("h3", {}, "Prompt"),
    pre(t.prompt),
    h("h2", {}, "Runs"),
    runs,
  );
  await refreshRuns();
  live("scheduler.*", signal, refreshRuns);
}

async function taskRun(view, id, signal) {
  const body = h("div", { id: "task-run" });
  const error = h("p", { class: "error", role: "alert" });
  const show = async () => {
    const r = await get(`/v1/task-runs/${enc(id)}`, { signal });
    const deliveries = r.deliveries === null
      ? h("p", { class: "error" }, `Deliveries unavailable: ${r.deliveries_error || ""}`)
      : r.deliveries.length
        ? table(r.deliveries, [
            ["Channel", (d) => d.channel],
            ["Target", (d) => d.target],
            ["Status", (d) => status(d.status)],
            ["Attempts", (d) => h("ol", { class: "attempts" }, d.attempts.map((a) =>
              h("li", {}, `${when(a.at)} ${a.ok ? "ok" : "failed"}${a.status_code ? ` HTTP ${a.status_code}` : ""}${a.smtp_reply ? ` ${a.smtp_reply}` : ""}${a.error ? ` — ${a.error}` : ""}`)))],
            ["", (d) => d.status === "failed" ? retryButton(r.id, d.id, error, show) : ""],
          ], { id: "deliveries" })
        : h("p", { class: "muted" }, "No deliveries.");
    fill(
      body,
      table([r], [
        ["Status", (x) => status(x.status)],
        ["Fired by", (x) => x.fired_by],
        ["Started", (x) => when(x.started_at)],
        ["Finished", (x) => when(x.finished_at)],
        ["Tokens", (x) => tokens(x.usage)],
        ["Cost", (x) => usd(x.usage?.cost_usd)],
        ["Conversation", (x) => x.conversation_id ? link(`chat/${enc(x.conversation_id)}`, x.conversation_id) : "—"],
      ]),
      h("h3", {}, "Output"),
      r.error ? h("p", { class: "error" }, r.error) : null,
      pre(r.output ?? "(none yet)", { id: "task-run-output" }),
      r.event ? [h("h3", {}, "Triggering event"), pre(r.event)] : null,
      h("h3", {}, "Delivery log"),
      deliveries,
    );
    return r;
  };
  fill(view, h("p", {}, link("tasks", "← Tasks")), h("h1", {}, `Task run ${id}`), h("p", {}, link(`runs/${enc(id)}`, "Its run: tree, events, usage")), error, body);
  const r = await show();
  view.querySelector("h1").after(h("p", {}, "Task ", link(`tasks/${enc(r.task_id)}`, r.task_id)));
  live("scheduler.*,notifier.*", signal, show);
}

function retryButton(runId, deliveryId, error, after) {
  const b = h("button", { type: "button", class: "retry secondary" }, "Retry");
  b.addEventListener("click", async () => {
    try {
      await post(`/v1/task-runs/${enc(runId)}/deliveries/${enc(deliveryId)}/retry`);
      await after();
    } catch (e) {
      error.textContent = `${e.code}: ${e.message}`;
    }
  });
  return b;
}
