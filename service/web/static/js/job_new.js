// New job: the form, its defaults from the chosen recipe, and the API's refusals shown at the
// field they name.
"use strict";

(() => {
  const { api, h } = RN;
  const form = document.getElementById("job-form");
  const formError = form.querySelector('[data-error-for="form"]');
  let recipes = {};

  // Form field -> the recipe key it overrides; errors naming that key are shown at the field.
  const KEYS = {
    epochs: ["solver.epochs"], lr: ["solver.lr"], batch_size: ["solver.batch_size"],
    alpha: ["loss.alpha"], gamma: ["loss.gamma"],
    min_size: ["data.train_min_sizes", "data.eval_min_size"], max_size: ["data.max_size"],
  };

  function value(name) { return form.elements[name].value.trim(); }

  function overrides() {
    // [override text, field it came from]
    const out = [];
    const add = (field, key, v) => out.push([`${key}=${v}`, field]);
    if (value("epochs")) { add("epochs", "solver.epochs", value("epochs")); add("epochs", "solver.max_iters", "null"); }
    if (value("lr")) add("lr", "solver.lr", value("lr"));
    if (value("batch_size")) add("batch_size", "solver.batch_size", value("batch_size"));
    if (value("alpha")) {
      const parts = value("alpha").split(/[\s,]+/).filter(Boolean);
      add("alpha", "loss.alpha", parts.length > 1 ? `[${parts.join(", ")}]` : parts[0]);
    }
    if (value("gamma")) add("gamma", "loss.gamma", value("gamma"));
    if (value("min_size")) {
      add("min_size", "data.train_min_sizes", `[${value("min_size")}]`);
      add("min_size", "data.eval_min_size", value("min_size"));
    }
    if (value("max_size")) add("max_size", "data.max_size", value("max_size"));
    for (const line of value("overrides").split("\n")) {
      if (line.trim()) out.push([line.trim(), "overrides"]);
    }
    return out;
  }

  function clearErrors() {
    formError.hidden = true;
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
  }

  function showAt(field, message) {
    const slot = form.querySelector(`[data-error-for="${field}"]`) || formError;
    slot.hidden = false;
    slot.textContent = slot.textContent ? `${slot.textContent}\n${message}` : message;
    form.elements[field]?.classList.add("invalid");
  }

  // Where an error of the API belongs: the field whose recipe key or body field it names.
  function fieldOf(text, origins) {
    for (const [field, keys] of Object.entries(KEYS)) {
      if (keys.some((k) => text.startsWith(`${k}:`) || text.includes(`override ${k}`) || text.startsWith(`${k} `))) {
        if (origins.some(([o, f]) => f === field && keys.some((k) => o.startsWith(`${k}=`)))) return field;
      }
    }
    if (/^solver: .*(max_iters|epochs|steps)/.test(text) && value("epochs")) return "epochs";
    const fromOverride = origins.find(([o]) => text.includes(o) || text.includes(o.split("=")[0]));
    return fromOverride ? fromOverride[1] : null;
  }

  function showApiError(err, origins) {
    if (err.code === "invalid_request" && Array.isArray(err.details)) {
      for (const d of err.details) {
        const loc = d.loc || [];
        if (loc[0] === "body" && loc[1] === "overrides" && typeof loc[2] === "number" && origins[loc[2]]) {
          showAt(origins[loc[2]][1], `${origins[loc[2]][0]}: ${d.message}`);
        } else if (loc[0] === "body" && form.elements[loc[1]]) {
          showAt(loc[1], d.message);
        } else {
          showAt("form", `${loc.join(".")}: ${d.message}`);
        }
      }
      return;
    }
    if (err.code === "unknown_recipe") return showAt("recipe", err.message);
    if (err.code === "category_mismatch") {
      return showAt(err.message.includes("test") ? "test_dataset_id" : "val_dataset_id", err.message);
    }
    if (err.code === "not_found") return showAt("train_dataset_id", err.message);
    const lines = err.message.split("\n").map((l) => l.trim()).filter((l) => l && l !== "invalid recipe:");
    if (err.code === "invalid_recipe" && lines.length) {
      for (const line of lines) showAt(fieldOf(line, origins) || "overrides", line);
      return;
    }
    showAt("form", err.message);
  }

  function intOr(name, fallback) {
    const v = value(name);
    return v === "" ? fallback : Number(v);
  }

  async function submit(e) {
    e.preventDefault();
    clearErrors();
    const origins = overrides();
    const body = {
      train_dataset_id: value("train_dataset_id"),
      val_dataset_id: value("val_dataset_id") || null,
      test_dataset_id: value("test_dataset_id") || null,
      recipe: value("recipe"),
      overrides: origins.map(([o]) => o),
      devices: intOr("devices", 1),
      priority: intOr("priority", 0),
    };
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body });
      location.assign(`/jobs/${job.id}`);
    } catch (err) {
      if (err instanceof RN.ApiError) showApiError(err, origins);
      else showAt("form", String(err));
      button.disabled = false;
    }
  }

  function placeholders() {
    const r = recipes[value("recipe")];
    if (!r) return;
    const set = (name, v) => { form.elements[name].placeholder = v === null || v === undefined ? "" : String(v); };
    set("epochs", r.solver.epochs ?? `(${r.solver.max_iters} iterations)`);
    set("lr", r.solver.lr);
    set("batch_size", r.solver.batch_size);
    set("alpha", Array.isArray(r.loss.alpha) ? r.loss.alpha.join(", ") : r.loss.alpha ?? "none");
    set("gamma", r.loss.gamma);
    set("min_size", r.data.train_min_sizes.join(", "));
    set("max_size", r.data.max_size);
  }

  async function main() {
    const [datasets, recipeList] = await Promise.all([api("/v1/datasets?limit=500"), api("/v1/recipes")]);
    const options = datasets.data.map((d) => h("option", { value: d.id },
      `${d.name} (${d.num_images} images, ${d.categories.length} classes)`));
    form.elements.train_dataset_id.replaceChildren(...options.map((o) => o.cloneNode(true)));
    form.elements.val_dataset_id.append(...options.map((o) => o.cloneNode(true)));
    form.elements.test_dataset_id.append(...options.map((o) => o.cloneNode(true)));
    if (!datasets.data.length) showAt("train_dataset_id", "No datasets yet: upload one first.");
    recipes = Object.fromEntries(recipeList.data.map((r) => [r.name, r.recipe]));
    form.elements.recipe.replaceChildren(...recipeList.data.map((r) => h("option", { value: r.name }, r.name)));
    if (recipes.shapes_tiny) form.elements.recipe.value = "shapes_tiny";
    placeholders();
    form.elements.recipe.addEventListener("change", placeholders);
    form.addEventListener("submit", submit);
    form.dataset.ready = "true";
  }
  main().catch((e) => showAt("form", e.message));
})();
