// #/models (trained models) and #/models/ID (certify dropped images or typed Toy inputs).
"use strict";

// ---- #/models ------------------------------------------------------------------------------------
async function modelsPage(view, signal) {
  const page = await api("/v1/models?limit=100", { signal });
  const radii = [...new Set(page.items.flatMap((m) => Object.keys(m.certified_acc)))].sort((a, b) => a - b);
  view.append(
    h("h1", { class: "page-title" }, "Models"),
    h("p", { class: "muted" }, "Succeeded training jobs. Open one to certify your own inputs."),
    h("table", { class: "jobs", id: "models-table" },
      h("thead", {}, h("tr", {}, ["model", "architecture", "γ", "clean acc", ...radii.map((r) => `cert ${r}/255`), "finished"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, page.items.length ? page.items.map((m) => h("tr", { "data-model": m.id },
        h("td", {}, h("a", { href: `#/models/${m.id}`, class: "mono" }, m.id)),
        h("td", {}, specLabel(m.spec)),
        h("td", {}, m.gamma ?? "–"),
        h("td", {}, pct(m.clean_acc)),
        ...radii.map((r) => h("td", {}, pct(m.certified_acc[r]))),
        h("td", { class: "small" }, when(m.finished_at)),
      )) : h("tr", {}, h("td", { colspan: 5 + radii.length, class: "muted" }, "No trained models yet.")))),
  );
}

// ---- #/models/ID: certify dropped images ---------------------------------------------------------
// An image model's drop zone and file chooser; `onFiles` gets the files chosen.
function dropZone(size, onFiles) {
  const fileInput = h("input", { type: "file", id: "certify-files", multiple: true, accept: "image/png,image/jpeg,.npy" });
  const drop = h("div", { class: "dropzone", id: "dropzone" },
    h("p", {}, `Drop ${size}×${size} PNG or JPEG images here (they are not resized), or `),
    h("label", { class: "button" }, "choose files", fileInput));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
  fileInput.addEventListener("change", () => { onFiles([...fileInput.files]); fileInput.value = ""; });
  return drop;
}
// The Toy model's inputs, numbers typed in one field; `onValues` gets them once they all parse.
function toyInputs(onValues) {
  const values = h("input", { id: "toy-inputs", value: "0.3, -1.2, 1.5", size: 30 });
  const go = h("button", { type: "button", id: "toy-certify" }, "Certify");
  go.addEventListener("click", () => {
    const xs = values.value.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (!xs.length || xs.some((x) => !Number.isFinite(x))) { showError(new Error("Enter numbers separated by commas, e.g. 0.3, -1.2")); return; }
    onValues(xs);
  });
  return h("div", { class: "row" }, h("label", {}, "inputs x in [-2, 2]: ", values), go);
}
function certifyLegend(isImage) {
  return h("p", { class: "muted small" },
    isImage ? "Radii are l2 distances in [0, 1] pixel space, shown in units of 1/255. "
      : "Radii are distances in the input x itself (its own units, no pixel scaling). ",
    h("span", { class: "swatch certified" }), isImage
      ? " certified: no perturbation this small changes the class (from the Lipschitz bound). "
      : " certified: no perturbation this small moves the output f(x) across the 0.5 threshold (from the Lipschitz bound). ",
    h("span", { class: "swatch gap" }), " the true distance to the decision boundary lies in [certified, attacked]; ",
    "the attacked radius is the smallest adversarial perturbation found.");
}
async function modelPage(view, id, signal) {
  const model = await api(`/v1/models/${encodeURIComponent(id)}`, { signal });
  const isImage = model.spec.dataset !== "square_wave";
  const attack = h("input", { type: "checkbox", id: "attack", checked: true });
  const results = h("tbody", { id: "certify-results" });
  const barHead = h("th", {}, "distance to the boundary");
  const busy = h("span", { class: "muted small", id: "certify-busy" });
  view.append(
    h("div", { class: "title-row" }, h("h1", { class: "mono" }, model.id), h("a", { href: `#/jobs/${model.id}` }, "training job")),
    h("p", { class: "muted" }, `${specLabel(model.spec)} · clean accuracy ${pct(model.clean_acc)}`
      + Object.entries(model.certified_acc).map(([r, v]) => ` · certified at ${r}/255 ${pct(v)}`).join("")),
  );

  const inputArea = isImage ? dropZone(model.spec.img_size, certifyFiles)
    : toyInputs((xs) => certify({ json: { inputs: xs.map((x) => [x]), scale: "model" } }, xs.map((x) => ({ name: `x = ${x}` }))));

  view.append(
    inputArea,
    h("div", { class: "row" }, h("label", { class: "check" }, attack, h("span", {}, "also attack (upper bound on the distance; slower)")), busy),
    certifyLegend(isImage),
    h("table", { class: "jobs certify", id: "certify-table" },
      h("thead", {}, h("tr", {}, ["input", "", isImage ? "class" : "output f(x)", "margin", "certified", "attacked"]
        .map((t) => h("th", {}, t)), barHead)),
      results),
  );

  function certifyFiles(files) {
    if (!files.length) return;
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    certify({ body: form }, files.map((f) => ({ name: f.name, thumb: f.type.startsWith("image/") ? URL.createObjectURL(f) : null })));
  }
  async function certify(request, inputs) {
    busy.textContent = `certifying ${inputs.length} input(s)…`;
    const attacked = attack.checked;
    try {
      const out = await api(`/v1/models/${model.id}/certify?attack=${attacked}`, { method: "POST", ...request, signal });
      clearError();
      const scale = isImage ? 255 : 1;
      const unit = isImage ? "/255" : "";
      // newest answer on top, its rows in input order (prepending one by one reversed them)
      const rows = out.results.map((r, i) => {
        // a .npy file may hold several inputs: then rows outnumber files and are named by index
        const input = out.results.length === inputs.length ? inputs[i] : { name: `input ${i}` };
        return certRow(r, input, scale, unit, attacked);
      });
      results.prepend(...rows);
      rescaleBars(results, barHead, unit);
      busy.textContent = `bound: ${out.lipschitz_bound.kind}, γ = ${out.lipschitz_bound.gamma}`;
    } catch (err) {
      busy.textContent = "";
      showError(err);
    }
  }
}
// All bars of the page share one scale (0 .. the largest radius shown), so rows compare at a glance.
function rescaleBars(tbody, head, unit) {
  const bars = [...tbody.querySelectorAll(".interval")];
  const top = Math.max(...bars.map((b) => Math.max(Number(b.dataset.cert), Number(b.dataset.att || 0)))) || 1;
  const w = (x) => `${Math.max(0, Math.min(100, (100 * x) / top))}%`;
  for (const b of bars) {
    const cert = Number(b.dataset.cert);
    b.querySelector(".certified").style.width = w(cert);
    const gap = b.querySelector(".gap");
    if (gap) {
      gap.style.left = w(cert);
      gap.style.width = w(Math.max(0, Number(b.dataset.att) - cert));
    }
  }
  head.textContent = `distance to the boundary (bar: 0 – ${fmt(top, 2)}${unit})`;
}
// A class, or for a single-output regression (the Toy) its value f(x) and the side of the
// threshold it is certified on (threshold = f -/+ margin: the API gives f, side and margin).
function outputLabel(r) {
  if (r.logits.length !== 1) return r.class_name ? `${r.class_name} (${r.predicted})` : String(r.predicted);
  const f = r.logits[0];
  const threshold = r.predicted === 1 ? f - r.margin : f + r.margin;
  return `${fmt(f, 4)} (${r.predicted === 1 ? ">" : "≤"} ${fmt(threshold, 2)})`;
}
function certRow(r, input, scale, unit, attacked) {
  const cert = r.radius_pixel * scale;
  const att = r.attack_radius_pixel === null || r.attack_radius_pixel === undefined ? null : r.attack_radius_pixel * scale;
  const barEl = h("div", { class: "interval", "data-cert": cert, "data-att": att ?? "",
    title: att === null ? `certified ${fmt(cert)}${unit}; no attack` : `true distance in [${fmt(cert)}, ${fmt(att)}]${unit}` },
  h("div", { class: "certified" }), att !== null ? h("div", { class: "gap" }) : null);
  return h("tr", { class: "cert-row" },
    h("td", { class: "mono small" }, input.name),
    h("td", {}, input.thumb ? h("img", { src: input.thumb, class: "thumb", alt: "" }) : null),
    h("td", { class: "class" }, r.predicted < 0 ? "not finite" : outputLabel(r)),
    h("td", {}, fmt(r.margin, 4)),
    h("td", { class: "radius", title: `model-input space (after normalisation): ${fmt(r.radius, 4)}` }, `${fmt(cert, 2)}${unit}`),
    h("td", { class: "attack" }, att === null ? (attacked ? "none found" : "not run") : `${fmt(att, 2)}${unit}`),
    h("td", { class: "bar-cell" }, barEl),
  );
}
