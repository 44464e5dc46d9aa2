// The console's shell: sign-in, the nav, and hash routing (#/chat, #/tasks, #/runs/ID, ...).

import { get, key, signIn, signOut } from "./api.js";
import { fill, h } from "./dom.js";

const pages = {
  chat: () => import("./pages/chat.js"),
  tasks: () => import("./pages/tasks.js"),
  "task-runs": () => import("./pages/tasks.js"),
  runs: () => import("./pages/runs.js"),
  approvals: () => import("./pages/approvals.js"),
  research: () => import("./pages/research.js"),
  documents: () => import("./pages/research.js"),
  dlq: () => import("./pages/dlq.js"),
  notifications: () => import("./pages/notifications.js"),
  overview: () => import("./pages/overview.js"),
};

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let current = null; // the AbortController of the page shown: aborting it closes its streams

function route() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { page: page || "overview", args: rest.map(decodeURIComponent) };
}

async function show() {
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  const { page, args } = route();
  if (!key() || page === "signin") {
    nav.hidden = true;
    return signInPage();
  }
  nav.hidden = false;
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.page === page.split("-")[0]);
  const load = pages[page];
  if (!load) return fill(view, h("p", { class: "error" }, `No page ${page}`));
  view.dataset.page = page;
  view.dataset.ready = "";
  fill(view, h("p", { class: "muted" }, "Loading…"));
  try {
    const module = await load();
    if (signal.aborted) return;
    await module.render(view, { page, args, signal });
  } catch (e) {
    if (signal.aborted || e.name === "AbortError") return;
    fill(view, h("p", { class: "error", role: "alert" }, `${e.code ? `${e.code}: ` : ""}${e.message}`));
  }
  if (!signal.aborted) view.dataset.ready = page;
}

function signInPage() {
  const input = h("input", {
    id: "api-key",
    type: "password",
    name: "key",
    autocomplete: "off",
    placeholder: "ak_…",
    required: true,
    size: 48,
  });
  const message = h("p", { class: "error", id: "sign-in-error", role: "alert" });
  const form = h(
    "form",
    { id: "sign-in", class: "card narrow" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "With an API key of your tenant. It stays in this tab (sessionStorage) only."),
    h("label", {}, "API key ", input),
    h("button", { type: "submit" }, "Sign in"),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    signIn(input.value.trim());
    try {
      await get("/v1/agents"); // a cheap call that needs the key
      location.hash = "#/chat";
      if (route().page === "chat") show();
    } catch (e) {
      signOut();
      message.textContent = e.status === 401 ? "That key is not valid." : `Could not sign in: ${e.message}`;
    }
  });
  fill(view, form);
  view.dataset.page = "signin";
  view.dataset.ready = "signin";
  input.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  location.hash = "#/signin";
});
window.addEventListener("agentbus:unauthorized", () => {
  if (view.dataset.page === "signin") return; // the sign-in form says so itself
  signOut();
  if (route().page !== "signin") location.hash = "#/signin";
});
window.addEventListener("hashchange", show);
show();
