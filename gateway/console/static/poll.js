// Re-render a part of a page every few seconds while the page is shown (its signal aborts it), until
// `work` answers false.

export function every(ms, signal, work) {
  let timer = null;
  const tick = async () => {
    if (signal.aborted) return;
    try {
      if ((await work()) === false) return;
    } catch (e) {
      if (e.name === "AbortError") return;
      console.warn("refresh failed", e);
    }
    if (!signal.aborted) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  signal.addEventListener("abort", () => clearTimeout(timer));
}
