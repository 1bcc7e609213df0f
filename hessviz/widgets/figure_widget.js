// The front end of hessviz.widgets.figure_widget.SharedFigureWidget: plotly's own FigureWidget
// code, loaded once per page and without anywidget's 2 s limit.
//
// plotly's FigureWidget module is 5 MB. As its own `_esm`, every figure would send and compile a
// copy, and anywidget (0.11) rejects a model whose module takes more than 2 s to load and then
// drops every later update of it: on a busy machine whole panels froze. Here each figure's module
// is this small file; it takes plotly's code from the one PlotlyCode widget the figure points to
// (`_hv_code`: a URL on the page's server, or the code itself), imports it once per page (cached
// under `_hv_code_key`), and hands each figure to plotly's own `initialize` and `render`.
// `initialize` returns at once, so anywidget's timer never sees the load. Model changes that
// arrive while the code is loading are replayed to plotly's handlers when it is ready, in order,
// so no update is lost.

const LOADS = (globalThis.__hessvizPlotlyCode ??= new Map()); // code key -> Promise<module>
// What the browser tests read: plotly modules imported, from where, and model changes replayed.
const STATS = (globalThis.__hessvizPlotlyStats ??= { loads: 0, via: "", replayed: 0 });

function plotlyModule(model) {
  const key = model.get("_hv_code_key");
  if (!LOADS.has(key)) {
    const load = (async () => {
      const id = String(model.get("_hv_code")).replace(/^IPY_MODEL_/, "");
      const code = await model.widget_manager.get_model(id);
      STATS.loads += 1;
      STATS.via = code.get("url") ? "url" : "kernel";
      if (code.get("url")) {
        const href = new URL(code.get("url"), document.baseURI).href;
        return await import(/* webpackIgnore: true */ href);
      }
      const blob = new Blob([code.get("source")], { type: "text/javascript" });
      const url = URL.createObjectURL(blob);
      try {
        return await import(/* webpackIgnore: true */ url);
      } finally {
        URL.revokeObjectURL(url);
      }
    })();
    load.catch(() => LOADS.delete(key)); // a failed load is tried again by the next figure
    LOADS.set(key, load);
  }
  return LOADS.get(key);
}

// Deliver changes plotly's handlers missed: each one, in order, as the event it would have seen.
function replay(missed) {
  // Every change was recorded, so each attribute ends at its current value.
  STATS.replayed += missed.length;
  for (const [backbone, key, value] of missed) {
    backbone.attributes[key] = value;
    backbone.trigger(`change:${key}`, backbone, value, {});
  }
}

export default () => {
  let loaded = null; // Promise of plotly's widget ({initialize, render}) for this figure
  return {
    initialize(ctx) {
      const missed = []; // [backbone model, attribute, value] changed before plotly's code loaded
      const record = (backbone) => {
        for (const [key, value] of Object.entries(backbone.changedAttributes() || {})) {
          missed.push([backbone, key, value]);
        }
      };
      ctx.model.on("change", record);
      loaded = plotlyModule(ctx.model).then((module) => {
        const widget = module.default();
        widget.initialize?.(ctx);
        ctx.model.off("change", record);
        replay(missed);
        return widget;
      });
      loaded.catch((error) => console.error("[hessviz] plotly's widget code did not load:", error));
    },
    async render(ctx) {
      let widget;
      try {
        widget = await loaded;
      } catch (error) {
        ctx.el.textContent = "This plot could not load plotly's code; reload the page.";
        return undefined;
      }
      return widget.render(ctx);
    },
  };
};
