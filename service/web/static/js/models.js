// Models: the list.
"use strict";

(() => {
  const { api, h, pct, when, fill, short, bytes } = RN;
  async function main() {
    const page = await api("/v1/models?limit=500");
    fill(document.querySelector("#models-table tbody"), page.data.map((m) => h("tr", { "data-id": m.id },
      h("td", {}, h("a", { href: `/models/${m.id}` }, m.name)),
      h("td", { class: "small" }, m.classes.map((c) => c.name).join(", ")),
      h("td", { class: "num" }, pct(m.metrics?.summary?.AP)),
      h("td", { class: "num" }, pct(m.metrics?.summary?.AP50)),
      h("td", {}, m.metrics_split || "–"),
      h("td", {}, m.job_id ? h("a", { href: `/jobs/${m.job_id}` }, short(m.job_id)) : "–"),
      h("td", { class: "num" }, bytes(m.weights_bytes)),
      h("td", {}, when(m.created_at)))), document.querySelector(".empty"));
  }
  main();
})();
