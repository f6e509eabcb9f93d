// One model: classes, thresholds, metrics, recipe, weights, ONNX export, and "try it": an image
// dropped here is sent to POST /v1/models/{id}/predict once (at the lowest threshold the slider
// offers) and re-filtered here as the thresholds change, exactly as the API filters.
"use strict";

(() => {
  const { api, h, pct, fixed, when, bytes, short } = RN;
  const $ = (sel) => document.getElementById(sel);
  const SUMMARY = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];
  const slider = $("threshold");
  const FLOOR = Number(slider.min);
  let model = null;
  let tried = null; // {image, detections}

  function fact(k, v) {
    return h("div", { class: "fact" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v));
  }

  function classThreshold(categoryId) {
    const c = model.classes.find((k) => k.id === categoryId);
    return c && c.score_threshold !== null ? c.score_threshold : model.recipe.model.score_thresh;
  }

  function mode() { return document.querySelector('input[name="threshold-mode"]:checked').value; }

  // The detections the API would return for the current thresholds: score >= threshold, then
  // the recipe's cap on detections per image (highest scores first).
  function kept() {
    const global = Number(slider.value);
    const keep = tried.detections.filter((d) => d.score >= (mode() === "global" ? global : classThreshold(d.category_id)));
    return keep.sort((a, b) => b.score - a.score).slice(0, model.recipe.model.detections_per_img);
  }

  function redraw() {
    $("threshold-value").textContent = Number(slider.value).toFixed(2);
    if (!tried) return;
    const index = Object.fromEntries(model.classes.map((c, i) => [c.id, i]));
    const dets = kept();
    const canvas = $("try-canvas");
    const width = canvas.parentElement.clientWidth || 640;
    Boxes.draw(canvas, tried.image, dets.map((d) => ({ bbox: d.bbox, label: `${d.category_name} ${d.score.toFixed(2)}`, index: index[d.category_id] ?? 0 })), width);
    canvas.dataset.threshold = mode() === "global" ? slider.value : "best_f1";
    $("try-count").textContent = `${dets.length} of ${tried.detections.length} detections shown`;
    $("try-table").querySelector("tbody").replaceChildren(...dets.map((d) => h("tr", {},
      h("td", {}, d.category_name), h("td", { class: "num" }, d.score.toFixed(3)),
      h("td", { class: "small" }, `[${d.bbox.map((v) => v.toFixed(1)).join(", ")}]`))));
  }

  async function tryImage(file) {
    $("try-error").hidden = true;
    const form = new FormData();
    form.append("files", file);
    form.append("score_threshold", String(FLOOR));
    form.append("max_detections", "10000");
    $("try-count").textContent = "Detecting…";
    try {
      const [result, image] = await Promise.all([
        api(`/v1/models/${model.id}/predict`, { method: "POST", form }),
        Boxes.load(URL.createObjectURL(file)),
      ]);
      tried = { image, detections: result.images[0].detections };
      redraw();
    } catch (e) {
      $("try-count").textContent = "";
      RN.showError($("try-error"), e);
    }
  }

  function showExport(result) {
    const p = result.parity;
    $("export-result").replaceChildren(h("div", { class: "export" },
      h("p", { class: p.ok === false ? "error" : "ok" }, p.summary || (p.ok ? "parity holds" : "parity failed")),
      h("div", { class: "facts" }, fact("Input", `${result.input_size[0]} × ${result.input_size[1]}`),
        fact("Size", bytes(result.bytes)), fact("SHA-256", short(result.sha256))),
      h("a", { class: "button", href: result.download, download: "" }, "Download ONNX")));
  }

  async function exportOnnx() {
    const button = $("export");
    button.disabled = true;
    $("export-result").replaceChildren(h("p", { class: "muted" }, "Exporting and comparing with PyTorch…"));
    try {
      showExport(await api(`/v1/models/${model.id}/export`, { method: "POST", json: { format: "onnx" } }));
    } catch (e) {
      const box = h("div", {}, h("p", { class: "error" }, e.message));
      if (e.details) box.append(h("pre", { class: "log" }, JSON.stringify(e.details, null, 2)));
      $("export-result").replaceChildren(box);
    } finally {
      button.disabled = false;
    }
  }

  async function main() {
    model = await api(`/v1/models/${RN.id}`);
    $("title").textContent = model.name;
    document.title = `${model.name} · RetinaNet`;
    $("weights").href = `/v1/models/${model.id}/weights`;
    if (model.job_id) Object.assign($("job-link"), { hidden: false, href: `/jobs/${model.job_id}` });
    $("facts").replaceChildren(fact("Classes", model.classes.length), fact("Backbone", model.recipe.model.backbone),
      fact("Weights", `${bytes(model.weights_bytes)} · sha256 ${short(model.weights_sha256)}`),
      fact("Created", when(model.created_at)), fact("Id", model.id));
    const perClass = Object.fromEntries((model.metrics?.per_class || []).map((c) => [c.category_id, c]));
    $("classes").querySelector("tbody").replaceChildren(...model.classes.map((c) => h("tr", { "data-class": c.name },
      h("td", {}, c.name), h("td", { class: "num" }, c.id), h("td", { class: "num" }, fixed(c.score_threshold, 3)),
      h("td", { class: "num" }, pct(perClass[c.id]?.AP)), h("td", { class: "num" }, pct(perClass[c.id]?.AP50)))));
    $("metrics-split").textContent = model.metrics_split ? `(${model.metrics_split} set)` : "";
    $("headline").replaceChildren(...(model.metrics
      ? SUMMARY.map((k) => h("div", { class: "tile" }, h("span", { class: "v" }, pct(model.metrics.summary[k])), h("span", { class: "k" }, k)))
      : [h("p", { class: "muted" }, "No metrics.")]));
    $("recipe").textContent = JSON.stringify(model.recipe, null, 2);
    $("page").dataset.ready = "true";
  }

  const drop = $("try-drop");
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files[0]) tryImage(e.dataTransfer.files[0]); });
  $("try-input").addEventListener("change", (e) => { if (e.target.files[0]) tryImage(e.target.files[0]); e.target.value = ""; });
  slider.addEventListener("input", () => { document.querySelector('input[value="global"]').checked = true; redraw(); });
  for (const r of document.querySelectorAll('input[name="threshold-mode"]')) r.addEventListener("change", redraw);
  $("export").addEventListener("click", exportOnnx);
  main().catch((e) => RN.showError($("try-error"), e));
})();
