import { fill, h } from "../dom.js";

export async function render(view) {
  fill(view, h("p", { class: "muted" }, "Coming soon."));
}
