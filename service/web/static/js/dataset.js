// One dataset: its facts, the class histogram, its validation report and a few samples.
"use strict";

(() => {
  const { api, h, when } = RN;

  function histogram(dataset) {
    const counts = dataset.categories.map((c, i) => [c.name, dataset.class_counts[c.name] || 0, i]);
    const max = Math.max(1, ...counts.map(([, n]) => n));
    return counts.map(([name, n, i]) => {
      const bar = h("span", { class: "hbar" });
      bar.style.width = `${(100 * n) / max}%`;
      bar.style.background = RN.colour(i);
      return h("div", { class: "hrow", "data-class": name },
        h("span", { class: "hlabel" }, name), h("span", { class: "htrack" }, bar),
        h("span", { class: "hcount num" }, n));
    });
  }

  async function samples(dataset) {
    const names = Object.fromEntries(dataset.categories.map((c, i) => [c.id, [c.name, i]]));
    const page = await api(`/v1/datasets/${dataset.id}/samples?limit=6`);
    const box = document.getElementById("samples");
    for (const s of page.data) {
      const canvas = h("canvas", { "data-image": s.image_id });
      box.append(h("figure", {}, canvas, h("figcaption", { class: "small" },
        `${s.file_name} · ${s.boxes.length} boxes`)));
      const img = await Boxes.load(s.url);
      Boxes.draw(canvas, img, s.boxes.map((b) => ({
        bbox: b.bbox, label: (names[b.category_id] || [String(b.category_id)])[0],
        index: (names[b.category_id] || [0, 0])[1],
      })), 256);
    }
    if (!page.data.length) box.append(h("p", { class: "muted" }, "No images."));
  }

  async function main() {
    const d = await api(`/v1/datasets/${RN.id}`);
    document.getElementById("title").textContent = d.name;
    document.title = `${d.name} · RetinaNet`;
    document.getElementById("facts").replaceChildren(
      ...[["Images", d.num_images], ["Boxes", d.num_boxes], ["Classes", d.categories.length],
        ["Source", d.source], ["Created", when(d.created_at)], ["Id", d.id]]
        .map(([k, v]) => h("div", { class: "fact" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v))));
    document.getElementById("histogram").replaceChildren(...histogram(d));
    document.getElementById("report").replaceChildren(Report.render(d.report));
    await samples(d);
  }
  main().catch((e) => RN.showError(document.getElementById("facts"), e));
})();
