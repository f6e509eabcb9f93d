// Line charts on uPlot. Each chart's container holds its data for anyone who reads the page:
// data-points (x values drawn) and data-series (the series' labels); window.RNCharts too.
"use strict";

const Charts = (() => {
  const { h, colour } = RN;
  const drawn = {};
  const INTEGER_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
  window.RNCharts = {};

  function render(el, spec) {
    drawn[el.id]?.plot?.destroy();
    const { x, series } = spec;
    el.dataset.points = String(x.length);
    el.dataset.series = series.map((s) => s.label).join(",");
    window.RNCharts[el.id] = { x: [...x], series: series.map((s) => ({ label: s.label, values: [...s.values] })) };
    if (!x.length || !series.length) {
      el.replaceChildren(h("p", { class: "muted small nodata" }, spec.empty || "No data yet."));
      drawn[el.id] = { spec };
      return;
    }
    el.replaceChildren();
    const opts = {
      width: Math.max(280, el.clientWidth),
      height: spec.height || 220,
      scales: { x: { time: false, ...(spec.xRange ? { range: spec.xRange } : {}) },
        y: spec.yRange ? { range: spec.yRange } : { distr: spec.logY ? 3 : 1 } },
      axes: [
        { label: spec.xLabel, size: 40, labelSize: 18, ...(spec.integerX ? { incrs: INTEGER_STEPS } : {}) },
        { label: spec.yLabel, size: 60, labelSize: 18, ...(spec.yFormat ? { values: (u, ticks) => ticks.map(spec.yFormat) } : {}) },
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: spec.xLabel, value: (u, v) => (v === null || v === undefined ? "–" : spec.xFormat ? spec.xFormat(v) : v) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: colour(s.colour ?? i),
          width: 2,
          spanGaps: true,
          points: { show: x.length <= 60, size: 5 },
          value: (u, v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(4)),
        }))],
    };
    const plot = new uPlot(opts, [x, ...series.map((s) => s.values)], el);
    drawn[el.id] = { spec, plot };
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const id of Object.keys(drawn)) render(document.getElementById(id), drawn[id].spec);
    }, 150);
  });

  return { render };
})();
