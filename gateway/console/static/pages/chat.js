// Chat: the conversations, one conversation's messages, a box to send, the reply streaming token by token
// with its tool calls as they happen, a sidekick's context editor, and continue.

import { PAGE, api, get, pages, post, stream } from "../api.js";
import { approvalsInline } from "../approvals.js";
import { fill, h, link, more, pre, status, tokens, when } from "../dom.js";

const path = `/v1/conversations?limit=${PAGE}`;

export async function render(view, { args, signal }) {
  const [agents, first] = await Promise.all([get("/v1/agents", { signal }), get(path, { signal })]);
  const list = h("ul", { id: "conversations", class: "list" });
  const below = h("div");
  const item = (c) =>
    h(
      "li",
      { class: c.conversation_id === args[0] ? "selected" : "" },
      link(`chat/${encodeURIComponent(c.conversation_id)}`, c.title || c.conversation_id),
      h("span", { class: "muted" }, ` ${c.agent} · ${when(c.updated_at)}`, c.messages !== undefined ? ` · ${c.messages} messages` : ""),
    );
  const showList = (page) => {
    fill(list, page.conversations.map(item));
    if (!page.conversations.length) list.append(h("li", { class: "muted" }, "No conversations yet."));
    fill(below, more("conversations-more", page.next_after, pages(path, "conversations"), (found) => list.append(...found.map(item))));
  };
  showList(first);
  const pane = h("section", { id: "conversation", class: "pane" });
  fill(
    view,
    h("div", { class: "split" }, h("aside", {}, h("h2", {}, "Conversations"), newConversation(agents), list, below), pane),
  );
  const refreshList = async () => showList(await get(path, { signal })); // back to the newest page
  if (args[0]) await conversation(pane, args[0], signal, refreshList);
  else fill(pane, h("p", { class: "muted" }, "Pick a conversation, or start one."));
}

function newConversation(agents) {
  const agent = h("select", { name: "agent", id: "new-agent" }, agents.agents.map((a) => h("option", { value: a }, a)));
  const pattern = h(
    "select",
    { name: "pattern", id: "new-pattern" },
    h("option", { value: "chatbot" }, "chatbot"),
    h("option", { value: "sidekick" }, "sidekick"),
  );
  const error = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    { id: "new-conversation", class: "inline" },
    agent,
    pattern,
    h("button", { type: "submit" }, "New conversation"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const made = await post("/v1/conversations", { agent: agent.value, pattern: pattern.value });
      location.hash = `#/chat/${encodeURIComponent(made.id)}`;
    } catch (e) {
      error.textContent = e.message;
    }
  });
  return form;
}

async function conversation(pane, id, signal, refreshList) {
  const [conv, page] = await Promise.all([
    get(`/v1/conversations/${encodeURIComponent(id)}`, { signal }),
    get(`/v1/conversations/${encodeURIComponent(id)}/messages`, { signal }),
  ]);
  const messages = h("ol", { id: "messages", class: "messages" }, page.messages.map(message));
  const input = h("textarea", { id: "message", name: "message", rows: 3, placeholder: "Write a message…", required: true });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const error = h("p", { class: "error", role: "alert" });
  const box = h("form", { id: "send-box" }, input, h("div", { class: "row" }, send), error);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) box.requestSubmit();
  });
  box.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    error.textContent = "";
    send.disabled = true;
    input.value = "";
    messages.append(message({ role: "user", content: text, created_at: new Date().toISOString() }));
    try {
      await turn(messages, id, text, signal);
    } catch (e) {
      if (e.name !== "AbortError") error.textContent = `${e.code ? `${e.code}: ` : ""}${e.message}`;
    } finally {
      send.disabled = false;
    }
    refreshList().catch(() => {}); // its message count and time
  });
  const cont = h("button", { type: "button", id: "continue" }, "Continue in a new conversation");
  cont.addEventListener("click", async () => {
    try {
      const made = await post(`/v1/conversations/${encodeURIComponent(id)}/continue`);
      location.hash = `#/chat/${encodeURIComponent(made.id)}`;
    } catch (e) {
      error.textContent = e.message;
    }
  });
  fill(
    pane,
    h(
      "div",
      { class: "heading" },
      h("h2", {}, conv.id),
      h("p", { class: "muted" }, `${conv.pattern} · agent ${conv.agent} · policy ${conv.policy} · created ${when(conv.created_at)}`),
      conv.parent_id ? h("p", {}, "Continued from ", link(`chat/${encodeURIComponent(conv.parent_id)}`, conv.parent_id)) : null,
      cont,
    ),
    conv.pattern === "sidekick" ? contextEditor(conv) : null,
    messages,
    box,
  );
}

function message(m) {
  return h(
    "li",
    { class: `message ${m.role}` },
    h("div", { class: "meta" }, m.role, " · ", when(m.created_at), m.run_id ? [" · ", link(`runs/${encodeURIComponent(m.run_id)}`, "run")] : null),
    h("div", { class: "content" }, m.content),
  );
}

/** Send one message and show the reply as its events arrive. */
async function turn(messages, id, text, signal) {
  const content = h("div", { class: "content streaming", id: "reply" });
  const tools = h("ul", { class: "tools" });
  const approvals = approvalsInline();
  const meta = h("div", { class: "meta" }, "assistant · ", h("span", { class: "state" }, "sending…"));
  const item = h("li", { class: "message assistant live" }, meta, tools, approvals.node, content);
  messages.append(item);
  const state = meta.querySelector(".state");
  const calls = new Map();
  let ended = false;
  await stream("POST", `/v1/conversations/${encodeURIComponent(id)}/messages`, {
    body: { message: text, stream: true },
    signal,
    onEvent({ event, data }) {
      switch (event) {
        case "accepted":
          state.textContent = data.position ? `queued (${data.position} ahead)` : "accepted";
          break;
        case "started":
          state.replaceChildren(`${data.agent} on ${data.model} · `, link(`runs/${encodeURIComponent(data.run_id)}`, "run"));
          if (data.attempt > 1) content.textContent = ""; // the run restarted: its output starts over
          break;
        case "delta":
          content.append(data.text);
          break;
        case "tool_call": {
          if (calls.has(data.tool_call_id)) break; // a parked call, named again as its run resumes
          const row = h("li", { class: "tool" }, h("strong", {}, data.tool_name), h("code", {}, data.args), h("span", { class: "muted" }, " running…"));
          calls.set(data.tool_call_id, row);
          tools.append(row);
          break;
        }
        case "tool_result": {
          const row = calls.get(data.tool_call_id);
          if (row) row.lastChild.replaceWith(pre(data.content, { class: "tool-result" }));
          break;
        }
        case "usage":
          meta.dataset.usage = tokens(data.usage);
          break;
        case "waiting": // the run parked on calls that need approval: decide them here (or anywhere)
          approvals.waiting(data);
          break;
        case "approval_decided":
          approvals.decided(data);
          break;
        case "completed":
          ended = true;
          content.textContent = data.output;
          content.classList.remove("streaming");
          item.classList.remove("live");
          meta.append(" · ", tokens(data.usage));
          break;
        case "failed":
        case "cancelled":
          ended = true;
          content.classList.remove("streaming");
          item.classList.remove("live");
          item.append(h("p", { class: "error" }, status(event), " ", data.error ? data.error.message : data.reason || ""));
          break;
        default:
          break;
      }
    },
  });
  if (!ended) item.append(h("p", { class: "error" }, "The stream ended before the reply did; see the run."));
}

function contextEditor(conv) {
  const area = h("textarea", { id: "context", rows: 6, spellcheck: "false" });
  area.value = JSON.stringify(conv.context || {}, null, 2);
  const note = h("p", { class: "muted", role: "status" });
  const save = h("button", { type: "submit" }, "Save context");
  const form = h("form", { id: "context-editor", class: "card" }, h("h3", {}, "Sidekick context (the application state it sees)"), area, save, note);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let context;
    try {
      context = JSON.parse(area.value);
    } catch (e) {
      note.textContent = `Not JSON: ${e.message}`;
      return;
    }
    try {
      const saved = await api("PUT", `/v1/conversations/${encodeURIComponent(conv.id)}/context`, { context });
      area.value = JSON.stringify(saved.context, null, 2);
      note.textContent = `Saved at ${when(saved.updated_at)}`;
    } catch (e) {
      note.textContent = e.message;
    }
  });
  return form;
}
