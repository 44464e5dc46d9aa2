// A tool call waiting for a person (GET /v1/approvals), shown the same way on the Approvals page, in a chat
// reply and on a run's page: the tool, its arguments as the model wrote them, where it comes from, and
// Approve / Deny (with a reason: what the model is told) / Edit (run it with other arguments).

import { ApiError, get, post } from "./api.js";
import { h, link, pre, status, when } from "./dom.js";

const enc = encodeURIComponent;

function pretty(args) {
  try {
    return JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    return args; // not JSON: shown as the model wrote it
  }
}

/**
 * The card of one approval; deciding it replaces the card with the decided one (and calls `onDecided`). A run
 * event's approval leaves out the fields at their defaults (a pending one has no `status`): they are filled in.
 */
export function approvalCard(shown, { onDecided } = {}) {
  const approval = { status: "pending", ...shown };
  const card = h("li", { class: `approval card approval-${approval.status}`, dataset: { approvalId: approval.id, status: approval.status } });
  const redraw = (a) => {
    const fresh = approvalCard(a, { onDecided });
    card.replaceWith(fresh);
    onDecided?.(a, fresh);
  };
  card.append(
    h(
      "div",
      { class: "meta" },
      h("strong", { class: "approval-tool" }, approval.tool_name),
      " ",
      status(approval.status),
      ` · agent ${approval.agent} · `,
      link(`runs/${enc(approval.run_id)}`, "run"),
      approval.conversation_id ? [" · ", link(`chat/${enc(approval.conversation_id)}`, "conversation")] : null,
      approval.task_id ? [" · ", link(`tasks/${enc(approval.task_id)}`, "task")] : null,
      ` · asked ${when(approval.created_at)}`,
      approval.status === "pending" ? ` · expires ${when(approval.expires_at)}` : null,
    ),
    pre(pretty(approval.args), { class: "approval-args", title: `sha256 ${approval.args_sha256}` }),
    approval.status === "pending" ? controls(approval, redraw) : decided(approval),
  );
  return card;
}

function decided(a) {
  return h(
    "p",
    { class: "approval-decision" },
    `${a.status} by ${a.decided_by} at ${when(a.decided_at)}`,
    a.reason ? [" · reason: ", h("q", {}, a.reason)] : null,
    a.edited_args ? [" · ran with ", h("code", {}, a.edited_args)] : null,
  );
}

function controls(approval, redraw) {
  const error = h("p", { class: "error", role: "alert" });
  const reason = h("input", { name: "reason", class: "approval-reason", placeholder: "a reason (the model is told it)", maxlength: 2000, size: 40 });
  const editor = h("textarea", { name: "arguments", class: "approval-edit", rows: 4, spellcheck: "false", hidden: true });
  editor.value = pretty(approval.args);
  const buttons = [];
  const decide = async (body) => {
    error.textContent = "";
    for (const b of buttons) b.disabled = true;
    try {
      redraw(await post(`/v1/approvals/${enc(approval.id)}`, body));
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        redraw(await get(`/v1/approvals/${enc(approval.id)}`)); // decided elsewhere meanwhile: show how
        return;
      }
      error.textContent = `${e.code}: ${e.message}`;
      for (const b of buttons) b.disabled = false;
    }
  };
  const approve = h("button", { type: "button", class: "approve" }, "Approve");
  approve.addEventListener("click", () => decide({ decision: "approve" }));
  const deny = h("button", { type: "button", class: "deny danger" }, "Deny");
  deny.addEventListener("click", () => decide({ decision: "deny", ...(reason.value.trim() ? { reason: reason.value.trim() } : {}) }));
  const edit = h("button", { type: "button", class: "edit secondary" }, "Edit arguments");
  edit.addEventListener("click", () => {
    if (editor.hidden) {
      editor.hidden = false;
      edit.textContent = "Run with these arguments";
      editor.focus();
      return;
    }
    let args;
    try {
      args = JSON.parse(editor.value);
    } catch (e) {
      error.textContent = `Not JSON: ${e.message}`;
      return;
    }
    if (args === null || typeof args !== "object" || Array.isArray(args)) {
      error.textContent = "The arguments are a JSON object (by name).";
      return;
    }
    decide({ decision: "edit", arguments: args, ...(reason.value.trim() ? { reason: reason.value.trim() } : {}) });
  });
  buttons.push(approve, deny, edit);
  return h("div", { class: "approval-controls" }, editor, h("div", { class: "row" }, approve, edit, reason, deny), error);
}

/** A list of approval cards that `waiting` and `approval_decided` run events keep current. */
export function approvalsInline(attrs = {}) {
  const list = h("ul", { class: "approvals list", ...attrs });
  return {
    node: list,
    waiting(data) {
      for (const a of data.approvals || []) {
        if (!list.querySelector(`[data-approval-id="${CSS.escape(a.id)}"]`)) list.append(approvalCard(a));
      }
    },
    decided(data) {
      const a = data.approval;
      const shown = a && list.querySelector(`[data-approval-id="${CSS.escape(a.id)}"]`);
      if (shown && shown.dataset.status !== a.status) shown.replaceWith(approvalCard(a));
    },
  };
}
