// The front end of hessviz.widgets.figure_widget.PlotWidget: the figure is the model's state
// (`spec` = {data, layout}, `config`), drawn with plotly.js's public `Plotly.react`.
//
// Public APIs only: anywidget's `render({model, el})` and `model.get`/`model.on`, plotly.js's
// `Plotly.react`, `Plotly.Plots.resize` and `Plotly.purge`, the browser's `ResizeObserver`.
// plotly.js (4.8 MB) is loaded once per page, whatever the number of plots: from the URL the
// PlotlyJS widget names (a server that serves it, cached by the browser), else from the code that
// widget carries (sent once through the kernel). Every draw reads the model's current state, so
// a change that arrives while plotly.js loads is simply part of the first draw.

const LOADS = (globalThis.__hessvizPlotlyCode ??= new Map()); // code key -> Promise<Plotly>
// What the browser tests read: plotly.js loads, from where ("url": the server's, fetched by the page
// or by a plot; "kernel"; "page": already there), and how many state changes arrived while plotly.js
// was still loading (drawn from the latest state).
const STATS = (globalThis.__hessvizPlotlyStats ??= { loads: 0, via: "", replayed: 0 });

function classicScript(src) {
  // plotly.min.js is a UMD bundle that sets `window.Plotly`: load it as a classic script.
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.appendChild(script);
  });
}

function loadPlotly(model) {
  const key = model.get("_plotly_key"); // "plotly.js-<version>"
  if (!LOADS.has(key)) {
    const load = (async () => {
      const version = key.replace(/^plotly\.js-/, "");
      // hessviz's Voila template fetches plotly.js with the page, from the server's URL.
      const tag = document.querySelector("script[data-hessviz-plotly]");
      if (tag && globalThis.Plotly?.version !== version) {
        await new Promise((resolve) => {
          tag.addEventListener("load", resolve, { once: true });
          tag.addEventListener("error", resolve, { once: true });
          if (globalThis.Plotly) resolve();
        });
      }
      if (globalThis.Plotly?.version === version) {
        // Already on the page: from the template (the server's URL) or plotly's notebook renderer.
        STATS.loads += 1;
        STATS.via = tag ? "url" : "page";
        return globalThis.Plotly;
      }
      const id = String(model.get("_plotly")).replace(/^IPY_MODEL_/, "");
      const code = await model.widget_manager.get_model(id);
      STATS.loads += 1;
      if (code.get("url")) {
        STATS.via = "url";
        await classicScript(new URL(code.get("url"), document.baseURI).href);
      } else {
        STATS.via = "kernel";
        const blob = new Blob([code.get("source")], { type: "text/javascript" });
        const url = URL.createObjectURL(blob);
        try {
          await classicScript(url);
        } finally {
          URL.revokeObjectURL(url);
        }
      }
      if (!globalThis.Plotly) throw new Error("plotly.js loaded but defined no window.Plotly");
      return globalThis.Plotly;
    })();
    load.catch(() => LOADS.delete(key)); // a failed load is tried again by the next plot
    LOADS.set(key, load);
  }
  return LOADS.get(key);
}

const STATE = ["change:spec", "change:config"];

export default {
  async render({ model, el }) {
    const countEarly = () => (STATS.replayed += 1);
    for (const event of STATE) model.on(event, countEarly);
    const div = document.createElement("div");
    div.className = "hv-plot";
    div.style.width = "100%";
    el.appendChild(div);
    let Plotly;
    try {
      Plotly = await loadPlotly(model);
    } catch (error) {
      console.error("[hessviz] plotly.js did not load:", error);
      div.textContent = "This plot could not load plotly.js; reload the page.";
      return undefined;
    } finally {
      for (const event of STATE) model.off(event, countEarly);
    }
    // Draws are chained, so they reach plotly in order and never overlap; plotly gets copies
    // (it writes into the objects it is given).
    let drawing = Promise.resolve();
    const draw = () => {
      drawing = drawing.catch(() => undefined).then(() => {
        const spec = structuredClone(model.get("spec") ?? {});
        const config = { responsive: true, displaylogo: false, ...model.get("config") };
        const layout = { autosize: true, ...(spec.layout ?? {}) };
        return Plotly.react(div, spec.data ?? [], layout, config);
      });
      drawing.catch((error) => console.error("[hessviz] plotly.js could not draw:", error));
      return drawing;
    };
    for (const event of STATE) model.on(event, draw);
    await draw();
    // The plot takes its container's width whenever that changes (first layout included).
    const resize = new ResizeObserver(() => {
      if (div.offsetWidth > 0) Plotly.Plots.resize(div);
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      for (const event of STATE) model.off(event, draw);
      Plotly.purge(div);
    };
  },
};
