// #/jobs (the job list, polled) and #/new (the training-job form built from the server's catalog).
"use strict";

// ---- #/jobs --------------------------------------------------------------------------------------
// The runs ticked for the compare page: kept across the list's re-renders (and page visits).
const picked = new Set();
async function jobsPage(view, signal) {
  const filter = h("select", { id: "status-filter" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s || "all")));
  const body = h("tbody");
  const updated = h("span", { class: "muted small" });
  const compare = h("button", { type: "button", id: "compare-picked", class: "secondary" });
  const syncCompare = () => {
    compare.textContent = `Compare ${picked.size} runs`;
    compare.disabled = picked.size < 2;
  };
  compare.addEventListener("click", () => { location.hash = `#/compare/${[...picked].join(",")}`; });
  view.append(
    h("div", { class: "title-row" }, h("h1", {}, "Jobs"), h("label", {}, "status ", filter),
      h("a", { class: "button", href: "#/new" }, "New job"), compare, updated),
    h("table", { class: "jobs", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["", "job", "kind", "model", "status", "progress", "epoch", "test loss / acc", "created"]
        .map((t) => h("th", {}, t)))),
      body),
  );
  body.addEventListener("change", (e) => {
    const id = e.target.dataset.pick;
    if (!id) return;
    if (e.target.checked) picked.add(id); else picked.delete(id);
    syncCompare();
  });
  syncCompare();
  filter.addEventListener("change", () => refresh());
  async function refresh() {
    const q = filter.value ? `?status=${filter.value}&limit=100` : "?limit=100";
    const page = await api(`/v1/jobs${q}`, { signal });
    body.replaceChildren(...page.items.map(jobRow));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No jobs yet: ", h("a", { href: "#/new" }, "submit one"), ".")));
    updated.textContent = `updated ${new Date().toLocaleTimeString()} (every ${POLL_MS / 1000} s)`;
  }
  await pollLoop(refresh, signal);
}
// A job's name and tags (fields of the API once runs can be named), or nothing.
function jobLabel(job) {
  return [job.name ? h("div", { class: "job-name" }, job.name) : null,
    ...(job.tags || []).map((t) => h("span", { class: "tag" }, t))];
}
function jobRow(job) {
  const m = job.metrics || {};
  const bar = progressBar(job.progress, job.status);
  setBar(bar, job.status === "succeeded" ? 1 : job.progress ? job.progress.fraction : 0);
  const p = job.progress;
  return h("tr", { "data-job": job.id },
    h("td", {}, h("input", { type: "checkbox", class: "pick", "data-pick": job.id, checked: picked.has(job.id), "aria-label": `compare ${job.id}` })),
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id), jobLabel(job)),
    h("td", {}, job.kind),
    h("td", {}, job.kind === "evaluate" ? `model ${job.model_id}` : specLabel(job.spec)),
    h("td", {}, statusBadge(job.status, job.cancel_requested)),
    h("td", {}, bar),
    h("td", {}, p ? `${p.epoch} / ${p.epochs}` : "–"),
    h("td", {}, m.test_loss !== undefined ? `${fmt(m.test_loss, 4)}${m.test_acc != null ? " / " + pct(m.test_acc) : ""}` : "–"),
    h("td", { class: "small" }, when(job.created_at)),
  );
}

// ---- #/new ---------------------------------------------------------------------------------------
// The form's inputs; the selects of layer, scale and dataset are filled by syncChoices.
function jobInputs(cat, quick) {
  const sel = (name, options, value) => h("select", { name, id: `f-${name}` },
    options.map((o) => h("option", { value: o, selected: o === value }, o)));
  const num = (name, value, attrs = {}) => h("input", { name, id: `f-${name}`, type: "number", value, ...attrs });
  return {
    model: sel("model", cat.models.map((m) => m.name), quick.name),
    layer: h("select", { name: "layer", id: "f-layer" }),
    scale: h("select", { name: "scale", id: "f-scale" }),
    dataset: h("select", { name: "dataset", id: "f-dataset" }),
    gamma: num("gamma", "1.0", { step: "any", min: "0" }),
    epochs: num("epochs", "20", { min: "1", step: "1" }),
    lr: num("lr", "0.01", { step: "any", min: "0" }),
    seed: num("seed", "123", { min: "0", step: "1" }),
    loss: sel("loss", ["(default)", "xent", "multimargin", "mse"], "(default)"),
    certAcc: h("input", { type: "checkbox", name: "cert_acc", id: "f-cert_acc" }),
    lln: h("input", { type: "checkbox", name: "LLN", id: "f-LLN" }),
    dataPath: h("input", { name: "data_path", id: "f-data_path", placeholder: "folder in the server's data dir" }),
    preview: h("pre", { class: "preview", id: "spec-preview" }),
    submit: h("button", { type: "submit", id: "submit-job" }, "Submit"),
  };
}
function jobForm(f, quick) {
  const field = (label, input, hint) => h("label", {}, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
  return h("form", { id: "new-job", class: "grid-form" },
    field("model", f.model, `${quick.name}: ${quick.about} (seconds on a CPU)`),
    field("layer", f.layer),
    field("scale", f.scale),
    field("dataset", f.dataset),
    field("data_path", f.dataPath),
    field("gamma", f.gamma, "the network's l2 Lipschitz bound"),
    field("epochs", f.epochs),
    field("lr", f.lr),
    field("seed", f.seed),
    field("loss", f.loss),
    h("label", { class: "check" }, f.certAcc, h("span", {}, "certified accuracy each epoch (36/72/108 /255)")),
    h("label", { class: "check" }, f.lln, h("span", {}, "last-layer normalisation (LLN)")),
    h("div", { class: "row" }, f.submit),
  );
}
function fillSelect(select, options, keep) {
  const old = keep ? select.value : null;
  select.replaceChildren(...options.map((o) => h("option", { value: o }, o)));
  if (old && options.includes(old)) select.value = old;
}
function isBounded(cat, f) {
  const family = cat.family(f.layer.value);
  return !family || family.bounded;
}
// The choices the chosen model allows (from its card), the fields that apply to it, and the preview.
function syncChoices(cat, f) {
  const card = cat.card(f.model.value);
  // an untouched layer shows the model's first family, not its (unbounded) default
  fillSelect(f.layer, card.layers, f.layer.dataset.touched);
  fillSelect(f.scale, card.scales, true);
  fillSelect(f.dataset, cat.datasets(card.inputs), true);
  f.dataPath.closest("label").hidden = f.dataset.value !== "image_folder";
  f.certAcc.closest("label").hidden = card.task !== "classifier";
  f.lln.closest("label").hidden = !card.lln || "lln" in card.forced;
  f.gamma.disabled = !isBounded(cat, f);
  showPreview(cat, f);
}
// The ExperimentSpec fields of the form (only those that apply to the chosen model).
function formSpec(cat, f) {
  const s = { model: f.model.value, layer: f.layer.value, scale: f.scale.value, dataset: f.dataset.value,
    epochs: Number(f.epochs.value), lr: Number(f.lr.value), seed: Number(f.seed.value) };
  if (isBounded(cat, f)) s.gamma = Number(f.gamma.value);
  if (f.loss.value !== "(default)") s.loss = f.loss.value;
  const card = cat.card(f.model.value);
  if (card.task === "classifier" && f.certAcc.checked) s.cert_acc = true;
  if (card.lln && !("lln" in card.forced) && f.lln.checked) s.LLN = true;
  if (f.dataset.value === "image_folder" && f.dataPath.value) s.data_path = f.dataPath.value;
  return s;
}
function showPreview(cat, f) {
  f.preview.textContent = "POST /v1/jobs\n" + JSON.stringify({ kind: "train", spec: formSpec(cat, f) }, null, 2);
}

async function newJobPage(view, signal) {
  const idem = crypto.randomUUID();  // one per form: a double click or a retry does not make two jobs
  const cat = await getCatalog(signal);
  // The quick 1-D model (seconds on a CPU) is preselected.
  const quick = cat.models.find((m) => m.inputs === "vector") || cat.models[0];
  const f = jobInputs(cat, quick);
  const form = jobForm(f, quick);
  const sync = () => syncChoices(cat, f);
  f.layer.addEventListener("change", () => { f.layer.dataset.touched = "1"; sync(); });
  f.model.addEventListener("change", () => { delete f.layer.dataset.touched; sync(); });
  form.addEventListener("input", () => showPreview(cat, f));
  form.addEventListener("change", sync);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    f.submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: { kind: "train", spec: formSpec(cat, f) },
        headers: { "Idempotency-Key": idem }, signal });
      clearError();
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showError(err);
    } finally {
      f.submit.disabled = false;
    }
  });
  view.append(h("h1", { class: "page-title" }, "New training job"), h("div", { class: "two-col" }, form, h("div", {}, h("h3", {}, "Request"), f.preview)));
  sync();
}
