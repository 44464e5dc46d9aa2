// Bar charts as inline SVG (no chart library): one bar per key, its value written above it.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** bars([{key, value}], {title, format}) -> an <svg> */
export function bars(points, { title = "", format = (v) => String(v), id } = {}) {
  const width = 560;
  const height = 220;
  const pad = { top: 28, bottom: 36, left: 10, right: 10 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  if (id) root.setAttribute("id", id);
  root.append(svg("title", {}, title));
  root.append(svg("text", { x: pad.left, y: 16, class: "chart-title" }, title));
  const max = Math.max(0, ...points.map((p) => p.value)) || 1;
  const slot = (width - pad.left - pad.right) / Math.max(points.length, 1);
  const bar = Math.min(48, slot * 0.7);
  const base = height - pad.bottom;
  points.forEach((p, i) => {
    const x = pad.left + i * slot + (slot - bar) / 2;
    const h = ((base - pad.top) * p.value) / max;
    const rect = svg("rect", { class: "bar", x, y: base - h, width: bar, height: Math.max(h, 0.5) });
    rect.append(svg("title", {}, `${p.key}: ${format(p.value)}`));
    root.append(rect);
    root.append(svg("text", { x: x + bar / 2, y: base - h - 4, "text-anchor": "middle" }, format(p.value)));
    root.append(svg("text", { x: x + bar / 2, y: base + 14, "text-anchor": "middle" }, p.key.length > 14 ? `${p.key.slice(0, 13)}…` : p.key));
  });
  if (!points.length) root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no runs yet"));
  return root;
}
