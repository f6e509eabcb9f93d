// Jobs: the list, live (polled every 2 s while the page is open), with cancel.
"use strict";

(() => {
  const { api, h, when, fill, badge, duration, fixed, short } = RN;
  const table = document.querySelector("#jobs-table tbody");
  const empty = document.querySelector(".empty");

  function progress(job) {
    const p = job.progress;
    if (job.status === "succeeded") return [1, "done"];
    if (!p || !p.max_iters) return [0, job.waiting_for || (job.status === "queued" ? "queued" : "")];
    const f = Math.min(1, p.iteration / p.max_iters);
    const epoch = p.epoch === null || p.epoch === undefined ? "" : `epoch ${p.epoch + 1} · `;
    return [f, `${epoch}${p.iteration}/${p.max_iters} iterations`];
  }

  function recipeLabel(r) {
    if (!r) return "";
    const budget = r.solver.epochs ? `${r.solver.epochs} epochs` : `${r.solver.max_iters} iterations`;
    return `${r.model.backbone} · ${budget}`;
  }

  async function cancel(job) {
    if (!window.confirm(`Cancel job ${short(job.id)}?`)) return;
    try {
      await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
    } catch (e) {
      window.alert(e.message);
    }
    await refresh();
  }

  function row(job) {
    const [f, label] = progress(job);
    const bar = h("div", { class: "bar" });
    bar.style.width = `${(100 * f).toFixed(1)}%`;
    const active = job.status === "queued" || job.status === "running";
    const p = job.progress || {};
    return h("tr", { "data-id": job.id, "data-status": job.status },
      h("td", {}, h("a", { href: `/jobs/${job.id}` }, short(job.id))),
      h("td", {}, badge(job.status), job.cancel_requested && active ? h("span", { class: "small muted" }, " cancelling") : null),
      h("td", { class: "small" }, recipeLabel(job.recipe)),
      h("td", { class: "wide" }, h("div", { class: "progress" }, bar), h("span", { class: "small muted" }, label)),
      h("td", { class: "num" }, active ? fixed(p.images_per_s, 1) : "–"),
      h("td", { class: "num" }, active ? duration(p.eta_s) : "–"),
      h("td", { class: "num" }, job.priority),
      h("td", {}, when(job.created_at)),
      h("td", {}, active && !job.cancel_requested
        ? h("button", { class: "small danger", onclick: () => cancel(job) }, "Cancel") : null));
  }

  async function refresh() {
    const [jobs, workers] = await Promise.all([api("/v1/jobs?limit=100"), api("/v1/workers")]);
    fill(table, jobs.data.map(row), empty);
    const alive = workers.data.filter((w) => w.alive);
    document.getElementById("workers").textContent = alive.length
      ? `${alive.length} worker(s) live · up to ${workers.max_devices} device(s) per job`
      : "No live worker: queued jobs wait until one starts (retinanet worker).";
  }

  RN.every(2000, refresh);
})();
