// Building DOM nodes. Every string from the API goes in as text (textContent), never as HTML.

/** h("div", {class: "x", onclick: fn, dataset: {id: 1}}, "text", child, [more]) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "value") node.value = value;
    else if (name === "checked") node.checked = Boolean(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A link inside the console. */
export function link(route, text, attrs = {}) {
  return h("a", { href: `#/${route}`, ...attrs }, text);
}

/** A moment in UTC; with a time `zone` other than UTC, also its wall-clock time there. */
export function when(value, zone) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const utc = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  if (!zone || zone === "UTC") return utc;
  try {
    const local = new Intl.DateTimeFormat("sv-SE", { timeZone: zone, dateStyle: "short", timeStyle: "medium" }).format(d);
    return `${utc} (${local} ${zone})`;
  } catch {
    return utc;
  }
}

export function usd(value) {
  if (value === null || value === undefined) return "unpriced";
  return `$${Number(value).toFixed(4)}`;
}

export function tokens(usage) {
  if (!usage) return "—";
  return `${usage.input_tokens ?? 0} in / ${usage.output_tokens ?? 0} out`;
}

/** A table: columns [[header, row => cell], ...]. */
export function table(rows, columns, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map(([name]) => h("th", {}, name)))),
    h("tbody", {}, tableRows(rows, columns)),
  );
}

function tableRows(rows, columns) {
  return rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))));
}

/** A table of a list's first page, and a "More" button while the API says more follow (`next_after`):
 * `next(after)` reads the page after that cursor as [rows, next_after] (api.js `pages`). */
export function pagedTable(rows, nextAfter, next, columns, attrs = {}) {
  const grid = table(rows, columns, attrs);
  return h("div", { class: "paged" }, grid, more(`${attrs.id}-more`, nextAfter, next, (found) => {
    grid.tBodies[0].append(...tableRows(found, columns));
  }));
}

/** A "More" button (hidden when `after` is empty) that adds each next page with `add(rows)`. */
export function more(id, after, next, add) {
  const error = h("span", { class: "error", role: "alert" });
  const button = h("button", { type: "button", id, class: "secondary more", hidden: !after }, "More");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const [found, following] = await next(after);
      add(found);
      after = following;
      button.hidden = !after;
      error.textContent = "";
    } catch (e) {
      error.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
  return h("p", { class: "row" }, button, error);
}

export function status(value) {
  return h("span", { class: `status status-${String(value).replace(/[^a-z_]/g, "")}` }, value);
}

/** JSON shown as text. */
export function pre(value, attrs = {}) {
  return h("pre", attrs, typeof value === "string" ? value : JSON.stringify(value, null, 2));
}
