// A dataset validation report as people read it: counts, then every issue grouped by severity,
// each naming the item (image, annotation, category, file) it is about.
"use strict";

const Report = (() => {
  const { h } = RN;
  const ORDER = ["error", "warning", "info"];
  const TITLES = { error: "Errors", warning: "Warnings", info: "Notes" };

  function where(issue) {
    const parts = [];
    if (issue.file_name) parts.push(issue.file_name);
    if (issue.image_id !== null && issue.image_id !== undefined) parts.push(`image ${issue.image_id}`);
    if (issue.annotation_id !== null && issue.annotation_id !== undefined) parts.push(`annotation ${issue.annotation_id}`);
    if (issue.category_id !== null && issue.category_id !== undefined) parts.push(`category ${issue.category_id}`);
    return parts.join(" · ") || "the file";
  }

  function summary(report) {
    const facts = [
      ["images", report.num_images], ["annotations", report.num_annotations],
      ["boxes kept", report.num_boxes], ["dropped", report.num_boxes_dropped],
      ["clipped", report.num_boxes_clipped], ["crowd", report.num_crowd],
      ["images without boxes", report.num_negative_images],
    ];
    return h("p", { class: "small muted" },
      facts.map(([k, v]) => `${v ?? 0} ${k}`).join(" · "),
      ` · checked ${report.annotations_path} with images in ${report.image_dir}`);
  }

  // The report's element; `report` is the API's DatasetReport.
  function render(report) {
    const issues = report.issues || [];
    const groups = ORDER.map((sev) => [sev, issues.filter((i) => i.severity === sev)])
      .filter(([, list]) => list.length);
    const body = groups.map(([sev, list]) => h("div", { class: `issues sev-${sev}`, "data-severity": sev },
      h("h3", {}, `${TITLES[sev]} (${list.length})`),
      h("table", { class: "list compact" },
        h("thead", {}, h("tr", {}, h("th", {}, "Item"), h("th", {}, "Problem"), h("th", {}, "Code"))),
        h("tbody", {}, list.slice(0, 500).map((i) => h("tr", { class: "issue" },
          h("td", {}, where(i)), h("td", {}, i.message), h("td", {}, h("code", {}, i.code)))))),
      list.length > 500 ? h("p", { class: "small muted" }, `and ${list.length - 500} more`) : null));
    return h("div", { class: "report" }, summary(report),
      body.length ? body : h("p", { class: "ok" }, "No problems found."));
  }

  return { render };
})();
