// Datasets: the list, and the zip upload (drag and drop, progress bar, validation report).
"use strict";

(() => {
  const { api, upload, h, when, fill } = RN;
  const table = document.querySelector("#datasets-table tbody");
  const empty = document.querySelector(".empty");
  const drop = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-bar");
  const text = document.getElementById("upload-text");
  const reportBox = document.getElementById("upload-report");

  async function refresh() {
    const page = await api("/v1/datasets?limit=500");
    fill(table, page.data.map((d) => h("tr", { "data-id": d.id },
      h("td", {}, h("a", { href: `/datasets/${d.id}` }, d.name)),
      h("td", { class: "num" }, d.num_images), h("td", { class: "num" }, d.num_boxes),
      h("td", { class: "num", title: d.categories.map((c) => c.name).join(", ") }, d.categories.length),
      h("td", {}, d.source), h("td", {}, when(d.created_at)))), empty);
  }

  async function send(file) {
    const form = new FormData();
    form.append("file", file);
    const name = document.getElementById("upload-name").value.trim();
    if (name) form.append("name", name);
    status.hidden = false;
    status.dataset.state = "uploading";
    bar.style.width = "0%";
    text.textContent = `Uploading ${file.name}…`;
    reportBox.replaceChildren();
    try {
      const dataset = await upload("/v1/datasets", form, (f) => {
        bar.style.width = `${(100 * f).toFixed(1)}%`;
        text.textContent = f < 1 ? `Uploading ${file.name}: ${(100 * f).toFixed(0)}%` : "Validating…";
      });
      bar.style.width = "100%";
      status.dataset.state = "done";
      text.replaceChildren("Uploaded ", h("a", { href: `/datasets/${dataset.id}` }, dataset.name),
        `: ${dataset.num_images} images, ${dataset.num_boxes} boxes.`);
      reportBox.replaceChildren(Report.render(dataset.report));
      await refresh();
    } catch (err) {
      status.dataset.state = "failed";
      text.textContent = `Refused: ${err.message}`;
      text.classList.add("error");
      if (err.code === "invalid_dataset" && err.details) reportBox.replaceChildren(Report.render(err.details));
    }
  }

  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) send(file);
  });
  input.addEventListener("change", () => {
    text.classList.remove("error");
    if (input.files[0]) send(input.files[0]);
    input.value = "";
  });
  refresh();
})();
