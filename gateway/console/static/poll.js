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

/**
 * Call `refresh` whenever one of the tenant's events of `types` arrives (GET /v1/events, read with fetch),
 * coalesced over 150 ms; where the feed cannot be read (the tenant's `streams` quota spent, the bus away) poll every
 * `fallbackMs` instead. `onEvent` sees each event. Stops when `signal` aborts.
 */
export function live(types, signal, refresh, { fallbackMs = 2000, onEvent } = {}) {
  let pending = null;
  const soon = () => {
    if (pending || signal.aborted) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        await refresh();
      } catch (e) {
        if (e.name !== "AbortError") console.warn("refresh failed", e);
      }
    }, 150);
  };
  signal.addEventListener("abort", () => clearTimeout(pending));
  import("./api.js").then(({ stream }) =>
    stream("GET", types ? `/v1/events?types=${encodeURIComponent(types)}` : "/v1/events", {
      signal,
      onOpen: soon, // what happened before the feed opened is read once
      onEvent(message) {
        onEvent?.(message);
        soon();
      },
    }).catch((e) => {
      if (e.name === "AbortError" || signal.aborted) return;
      console.warn("no live events; polling", e.message);
      every(fallbackMs, signal, refresh);
    }),
  );
}
