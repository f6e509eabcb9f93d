// One job, live: status, progress, curves, COCO numbers, per-class table and PR curves,
// attempt history and log tail. The job's own event stream (GET /v1/jobs/{id}/events, the
// session cookie authenticates it) drives the updates; nothing needs a reload.
"use strict";

(() => {
  const { api, h, pct, fixed, duration, when, badge, short } = RN;
  const FINAL = ["succeeded", "failed", "cancelled"];
  const SUMMARY = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];
  const id = RN.id;
  const $ = (sel) => document.getElementById(sel);
  const lr = { x: [], y: [] };
  let job = null;
  let stream = null;

  function fact(k, v) {
    return h("div", { class: "fact" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v));
  }

  function showJob(j) {
    job = j;
    const status = $("status");
    status.replaceWith(Object.assign(badge(j.status), { id: "status" }));
    document.getElementById("page").dataset.status = j.status;
    const p = j.progress || {};
    const f = j.status === "succeeded" ? 1 : p.max_iters ? Math.min(1, p.iteration / p.max_iters) : 0;
    $("progress-bar").style.width = `${(100 * f).toFixed(1)}%`;
    const active = !FINAL.includes(j.status);
    $("facts").replaceChildren(
      // A step's epoch counts from 0: the one it belongs to is epoch + 1.
      fact("Epoch", p.epoch === null || p.epoch === undefined ? "–" : `${p.epoch + 1}${j.recipe.solver.epochs ? ` / ${j.recipe.solver.epochs}` : ""}`),
      fact("Iteration", p.iteration ? `${p.iteration} / ${p.max_iters}` : "–"),
      fact("Images/s", active ? fixed(p.images_per_s, 1) : "–"),
      fact("ETA", active ? duration(p.eta_s) : "–"),
      fact("Attempt", `${j.attempt} (max ${j.max_attempts} without progress)`),
      fact("Devices", j.devices), fact("Priority", j.priority),
      fact("Created", when(j.created_at)), fact("Started", when(j.started_at)), fact("Finished", when(j.finished_at)),
      fact("Datasets", h("span", {},
        h("a", { href: `/datasets/${j.train_dataset_id}` }, `train ${short(j.train_dataset_id)}`),
        j.val_dataset_id ? [" · ", h("a", { href: `/datasets/${j.val_dataset_id}` }, `val ${short(j.val_dataset_id)}`)] : " · val held out",
        j.test_dataset_id ? [" · ", h("a", { href: `/datasets/${j.test_dataset_id}` }, `test ${short(j.test_dataset_id)}`)] : "")),
    );
    if (j.waiting_for) $("facts").append(fact("Waiting for", j.waiting_for));
    $("cancel").hidden = !active || j.cancel_requested;
    const err = $("error");
    err.hidden = !j.error;
    err.textContent = j.error || "";
    $("recipe").textContent = JSON.stringify(j.recipe, null, 2);
  }

  function lossSeries(history, key) {
    const terms = [...new Set(history.flatMap((e) => Object.keys(e[key] || {})))].sort();
    return terms.map((t) => ({ label: t, values: history.map((e) => (e[key] ? e[key][t] ?? null : null)) }));
  }

  function showMetrics(m) {
    const history = m.history;
    const epochs = history.map((e) => e.epoch);
    Charts.render($("chart-train"), { x: epochs, series: lossSeries(history, "train_losses"), xLabel: "epoch", yLabel: "loss", integerX: true });
    const withVal = history.filter((e) => e.val_losses);
    Charts.render($("chart-val"), { x: withVal.map((e) => e.epoch), series: lossSeries(withVal, "val_losses"), xLabel: "epoch", yLabel: "loss", integerX: true });
    const scored = history.filter((e) => e.metrics);
    Charts.render($("chart-ap"), {
      x: scored.map((e) => e.epoch), xLabel: "epoch", yLabel: "AP (%)", integerX: true,
      series: ["AP", "AP50"].map((k) => ({ label: k, values: scored.map((e) => 100 * (e.metrics.summary[k] ?? 0)) })),
      empty: "No validation yet.",
    });
    const shown = m.test || m.latest;
    $("metrics-split").textContent = m.test ? "(test set, best checkpoint)" : m.latest ? `(validation, epoch ${scored.at(-1)?.epoch})` : "";
    $("headline").replaceChildren(...(shown
      ? SUMMARY.map((k) => h("div", { class: "tile", "data-key": k }, h("span", { class: "v" }, pct(shown.summary[k])), h("span", { class: "k" }, k)))
      : [h("p", { class: "muted" }, "No validation metrics yet.")]));
    const perClass = shown ? shown.per_class : [];
    $("per-class").querySelector("tbody").replaceChildren(...perClass.map((c, i) => h("tr", { "data-class": c.name },
      h("td", {}, h("span", { class: "swatch", "data-colour": i }), c.name),
      ...["AP", "AP50", "AP75", "AR100", "best_f1"].map((k) => h("td", { class: "num", "data-key": k, "data-value": String(c[k]) }, pct(c[k]))),
      h("td", { class: "num", "data-key": "best_f1_threshold", "data-value": String(c.best_f1_threshold) }, fixed(c.best_f1_threshold, 3)))));
    for (const sw of document.querySelectorAll(".swatch")) sw.style.background = RN.colour(Number(sw.dataset.colour));
    const recall = Array.from({ length: 101 }, (_, i) => i / 100);
    Charts.render($("chart-pr"), {
      x: perClass.length ? recall : [], xLabel: "recall", yLabel: "precision", yRange: [0, 1], xRange: [0, 1],
      series: perClass.map((c, i) => ({ label: c.name, values: c.pr_curve, colour: i })),
      empty: "No validation yet.",
    });
  }

  function showLr() {
    Charts.render($("chart-lr"), { x: lr.x, series: lr.x.length ? [{ label: "lr", values: lr.y }] : [], xLabel: "iteration", yLabel: "lr", empty: "No steps yet.", yFormat: (v) => v.toExponential(1) });
  }

  function showHistory(hist) {
    $("history").replaceChildren(...hist.data.map((e) => {
      let text;
      if (e.kind === "start") text = (e.iteration ? `training resumed from iteration ${e.iteration}` : "training started") + (e.message ? `; warning: ${e.message}` : "");
      else if (e.kind === "error") text = `error: ${e.message}`;
      else if (e.status === "running") text = `attempt ${e.attempt} claimed by worker ${short(e.worker_id)}`;
      else text = `${e.status}${e.message ? `: ${e.message}` : ""}${e.iteration ? ` (checkpoint at iteration ${e.iteration})` : ""}`;
      return h("li", { class: e.kind, "data-kind": e.kind }, h("time", { class: "small muted" }, when(e.at)), " ", text);
    }));
  }

  async function showLog() {
    const text = await api(`/v1/jobs/${id}/logs?tail=40`);
    const log = $("log");
    log.textContent = text || "(empty)";
    log.scrollTop = log.scrollHeight;
  }

  async function modelLink() {
    if (job.status !== "succeeded") return;
    const models = await api("/v1/models?limit=500");
    const model = models.data.find((m) => m.job_id === id);
    if (model) Object.assign($("model-link"), { hidden: false, href: `/models/${model.id}` });
  }

  const refresh = {
    job: async () => showJob(await api(`/v1/jobs/${id}`)),
    metrics: async () => showMetrics(await api(`/v1/jobs/${id}/metrics`)),
    history: async () => showHistory(await api(`/v1/jobs/${id}/history`)),
    log: showLog,
  };
  let pending = Promise.resolve();
  const queue = (...names) => { pending = pending.then(() => Promise.all(names.map((n) => refresh[n]()))).catch(console.warn); return pending; };

  function follow() {
    stream = new EventSource(`/v1/jobs/${id}/events`);
    stream.addEventListener("step", (e) => {
      const step = JSON.parse(e.data);
      lr.x.push(step.iteration);
      lr.y.push(step.lr);
      if (!FINAL.includes(job.status)) {
        showJob({ ...job, status: "running", progress: { ...step } });
      }
      scheduleLr();
    });
    stream.addEventListener("epoch", () => queue("metrics", "log"));
    stream.addEventListener("start", () => queue("history", "job"));
    stream.addEventListener("status", (e) => {
      const s = JSON.parse(e.data);
      if (FINAL.includes(s.status)) {
        stream.close();
        queue("job", "metrics", "history", "log").then(modelLink).then(() => { document.getElementById("page").dataset.live = "done"; });
        showLr();
      } else {
        queue("job", "history");
      }
    });
    stream.addEventListener("error", (e) => {
      if (e.data) queue("history", "log"); // a job error event; connection errors have no data
    });
  }

  let lrTimer = null;
  function scheduleLr() {
    if (lrTimer) return;
    lrTimer = setTimeout(() => { lrTimer = null; showLr(); }, 500);
  }

  $("cancel").addEventListener("click", async () => {
    if (!window.confirm(`Cancel job ${short(id)}?`)) return;
    try { await api(`/v1/jobs/${id}/cancel`, { method: "POST" }); } catch (e) { window.alert(e.message); }
    queue("job", "history");
  });

  async function main() {
    await refresh.job();
    await Promise.all([refresh.metrics(), refresh.history(), refresh.log(), modelLink()]);
    showLr();
    follow();
  }
  main().catch((e) => RN.showError($("error"), e));
})();
