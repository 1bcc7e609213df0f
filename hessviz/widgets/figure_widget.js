// The front end of hessviz.widgets.figure_widget.PlotWidget: the figure is the model's state
// (`spec` = {data, layout}, `config`), drawn with plotly.js's public `Plotly.react`.
//
// Public APIs only: anywidget's `render({model, el})` and `model.get`/`model.on`/`model.send`,
// plotly.js's `Plotly.react`, `Plotly.Plots.resize` and `Plotly.purge`, the browser's
// `ResizeObserver`.
// plotly.js (its 1.5 MB cartesian bundle, or plotly.py's full 4.8 MB) is loaded once per page,
// whatever the number of plots: from the URL the PlotlyJS widget names (a server that serves
// it), else from the code that widget carries (sent once through the kernel). Every draw reads
// the model's current state, so a change that arrives while plotly.js loads is simply part of
// the first draw.

const LOADS = (globalThis.__hessvizPlotlyCode ??= new Map()); // code key -> Promise<Plotly>
// What the browser tests read: plotly.js loads, from where ("url": the server's, fetched by the page
// or by a plot; "kernel"; "page": already there), how many state changes arrived while plotly.js
// was still loading (drawn from the latest state), and the page's draws: asked for, done, failed
// (asked > done + failed for long: a draw that never finished holds up the plot's later ones).
const STATS = (globalThis.__hessvizPlotlyStats ??= { loads: 0, via: "", replayed: 0 });
STATS.draws ??= { asked: 0, done: 0, failed: 0 };

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

const STATE = ["change:spec", "change:config"]; // (`revision` changes with `spec`)

// First draws take turns, page-wide: one plot per task, the plots on screen first, so the browser
// paints the first heatmap (and answers clicks) before it draws the plots further down, instead
// of after all of them. A plot joins the queue once it is on the page with a width: plotly.js
// then lays it out once, at its real size (a plot drawn before it is attached is drawn again
// when it gets its width).
const TURNS = (globalThis.__hessvizFirstDraws ??= { queue: [], running: false });

function onScreen(el) {
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.bottom > 0 && r.top < innerHeight && r.left < innerWidth;
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

async function takeTurns() {
  if (TURNS.running) return;
  TURNS.running = true;
  try {
    await nextTask(); // plots laid out in the same frame all join before the first is chosen
    while (TURNS.queue.length) {
      const i = Math.max(0, TURNS.queue.findIndex((turn) => onScreen(turn.el)));
      const [turn] = TURNS.queue.splice(i, 1);
      await turn.draw().catch(() => undefined);
      await nextTask(); // the browser may paint and handle input between two plots
    }
  } finally {
    TURNS.running = false;
  }
}

function firstDraw(el, draw) {
  TURNS.queue.push({ el, draw });
  takeTurns();
}

// Milliseconds after plotly.js is there after which a plot that has no width yet (e.g. in a hidden
// container) is drawn anyway, at plotly.js's default size; it is resized once it gets a width.
const UNSIZED_DRAW_MS = 1500;

export default {
  // Returns at once: ipywidgets puts a view's element on the page only after `render` resolves,
  // and the first draw waits for that (and for plotly.js).
  render({ model, el }) {
    const countEarly = () => (STATS.replayed += 1);
    for (const event of STATE) model.on(event, countEarly);
    const div = document.createElement("div");
    div.className = "hv-plot";
    div.style.width = "100%";
    el.appendChild(div);
    let Plotly = null;
    let disposed = false;
    let queued = false;
    let drawnWidth = -1;
    // Draws are chained, so they reach plotly in order and never overlap; plotly gets copies
    // (it writes into the objects it is given).
    let drawing = Promise.resolve();
    let drewBefore = false;
    const draw = () => {
      STATS.draws.asked += 1;
      let revision = -1; // the figure's revision this draw shows (read with the figure)
      drawing = drawing.catch(() => undefined).then(() => {
        if (disposed) return undefined;
        const spec = structuredClone(model.get("spec") ?? {});
        revision = model.get("revision") ?? 0;
        const config = { responsive: true, displaylogo: false, ...model.get("config") };
        const layout = { autosize: true, ...(spec.layout ?? {}) };
        drawnWidth = div.offsetWidth;
        return Plotly.react(div, spec.data ?? [], layout, config);
      });
      drawing.then(
        () => {
          STATS.draws.done += 1;
          if (disposed || revision < 0) return;
          // PlotWidget in the kernel: which figure a page shows (PlotPanel's check that updates
          // arrive) and, on a view's first draw, its on_drawn callbacks
          model.send({ event: "drawn", revision, first: !drewBefore });
          drewBefore = true;
        },
        (error) => {
          STATS.draws.failed += 1;
          console.error("[hessviz] plotly.js could not draw:", error);
        },
      );
      return drawing;
    };
    const queueFirstDraw = () => {
      if (queued || disposed || !Plotly) return;
      queued = true;
      firstDraw(el, async () => {
        for (const event of STATE) model.on(event, draw);
        await draw(); // its "drawn" message says first: true
      });
    };
    // The first draw once the plot has a width; later, the plot follows its container's width.
    const resize = new ResizeObserver(() => {
      if (div.offsetWidth === 0) return;
      if (!queued) queueFirstDraw();
      else if (drawnWidth >= 0 && div.offsetWidth !== drawnWidth) {
        drawnWidth = div.offsetWidth;
        Plotly.Plots.resize(div);
      }
    });
    let unsized;
    loadPlotly(model).then(
      (loaded) => {
        for (const event of STATE) model.off(event, countEarly);
        if (disposed) return;
        Plotly = loaded;
        resize.observe(el); // reports a size once the element is on the page and laid out
        unsized = setTimeout(queueFirstDraw, UNSIZED_DRAW_MS);
      },
      (error) => {
        for (const event of STATE) model.off(event, countEarly);
        console.error("[hessviz] plotly.js did not load:", error);
        div.textContent = "This plot could not load plotly.js; reload the page.";
      },
    );
    return () => {
      disposed = true;
      clearTimeout(unsized);
      resize.disconnect();
      for (const event of STATE) model.off(event, draw);
      for (const event of STATE) model.off(event, countEarly);
      if (Plotly) Plotly.purge(div);
    };
  },
};
