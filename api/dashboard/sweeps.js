// #/sweeps (the list, polled) and #/sweeps/ID: a sweep's counts by status, a heatmap of a chosen
// metric over two of the fields its runs differ in, its points x metrics table, and cancel.
"use strict";

// ---- #/sweeps ------------------------------------------------------------------------------------
function countsText(counts) {
  return Object.entries(counts || {}).sort().map(([k, n]) => `${n} ${k}`).join(" · ") || "no jobs";
}
async function sweepsPage(view, signal) {
  const body = h("tbody");
  view.append(
    h("div", { class: "title-row" }, h("h1", {}, "Sweeps"),
      h("span", { class: "muted small" }, "start one with ", h("code", {}, "lbdn paper run PRESET"), " (", h("a", { href: "#/paper" }, "presets"), ") or POST /v1/sweeps")),
    h("table", { class: "jobs", id: "sweeps-table" },
      h("thead", {}, h("tr", {}, ["sweep", "name", "preset", "status", "jobs", "created"].map((t) => h("th", {}, t)))), body));
  await pollLoop(async () => {
    const page = await api("/v1/sweeps?limit=100", { signal });
    body.replaceChildren(...page.items.map((sw) => h("tr", { "data-sweep": sw.id },
      h("td", {}, h("a", { href: `#/sweeps/${sw.id}`, class: "mono" }, sw.id)),
      h("td", {}, sw.name),
      h("td", {}, sw.preset ? h("a", { href: `#/paper/${sw.preset}` }, sw.preset) : "–"),
      h("td", {}, statusBadge(sw.status)),
      h("td", { class: "small" }, countsText(sw.counts)),
      h("td", { class: "small" }, when(sw.created_at)))));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No sweeps yet.")));
  }, signal);
}

// ---- #/sweeps/ID ---------------------------------------------------------------------------------
// The sweep's training runs as records: spec, status, final metrics (with its evaluation's numbers).
function sweepRuns(sw) {
  const evals = new Map(sw.jobs.filter((j) => j.role === "evaluate").map((j) => [j.train_job_id, j]));
  return sw.jobs.filter((j) => j.role === "train").map((j) => {
    const metrics = finalMetrics(j.result);
    const ev = evals.get(j.job_id);
    const er = ev && ev.status === "succeeded" ? ev.result || {} : {};
    if (typeof er.clean_acc === "number") metrics.eval_clean_acc = er.clean_acc;
    for (const [eps, v] of Object.entries(er.certified_acc || {})) metrics[`eval_cert_${eps}`] = v;
    for (const [eps, v] of Object.entries(er.autoattack_acc || {})) metrics[`eval_aa_${eps}`] = v;
    return { id: j.job_id, status: j.status, spec: j.spec || {}, point: j.point, result: j.result, metrics, evalId: ev && ev.job_id };
  });
}
const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
// The mean of `metric` over the runs at each (x, y): runs that differ in other fields (seeds) are averaged.
function heatCells(runs, metric, xKey, yKey) {
  const key = (r, k) => (k ? show(r.spec[k]) : "");
  const xs = [...new Set(runs.map((r) => key(r, xKey)))];
  const ys = [...new Set(runs.map((r) => key(r, yKey)))];
  const cells = new Map();
  for (const r of runs) {
    const v = r.metrics[metric];
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    const c = `${key(r, xKey)}\u0000${key(r, yKey)}`;
    cells.set(c, [...(cells.get(c) || []), v]);
  }
  return { xs, ys, value: (x, y) => mean(cells.get(`${x}\u0000${y}`) || []) };
}
function heatmap(runs, metric, xKey, yKey) {
  const { xs, ys, value } = heatCells(runs, metric, xKey, yKey);
  const all = xs.flatMap((x) => ys.map((y) => value(x, y))).filter((v) => v !== null);
  const lo = Math.min(...all), hi = Math.max(...all);
  const table = h("table", { class: "heatmap", id: "heatmap", "data-metric": metric },
    h("thead", {}, h("tr", {}, h("th", {}, `${yKey || ""} \\ ${xKey}`), xs.map((x) => h("th", {}, x)))),
    h("tbody", {}, ys.map((y) => h("tr", {}, h("th", {}, y || metric), xs.map((x) => numCell(metric, value(x, y)))))));
  // colour by value, light (lowest) to dark (highest); set through the CSSOM (the CSP forbids style="")
  for (const td of table.querySelectorAll("td[data-value]")) {
    const t = hi > lo ? (Number(td.dataset.value) - lo) / (hi - lo) : 0.5;
    td.style.background = `hsl(215, 70%, ${92 - 52 * t}%)`;
    td.style.color = t > 0.55 ? "#fff" : "";
  }
  return table;
}
function pointsTable(runs, fields, metrics) {
  return h("table", { class: "jobs", id: "points-table" },
    h("thead", {}, h("tr", {}, ["run", ...fields, "status", ...metrics].map((t) => h("th", {}, t)))),
    h("tbody", {}, runs.map((r) => {
      const flag = runFlag(r.spec, r.result);
      return h("tr", { "data-job": r.id },
        h("td", {}, h("a", { href: `#/jobs/${r.id}`, class: "mono" }, r.id), r.evalId ? h("a", { href: `#/jobs/${r.evalId}`, class: "small" }, " eval") : null,
          flag ? h("span", { class: "flag" }, flag) : null),
        fields.map((k) => h("td", { "data-key": k }, show(r.spec[k]))),
        h("td", {}, statusBadge(r.status)),
        metrics.map((k) => numCell(k, r.metrics[k])));
    })));
}

function sweepLayout(view, sw) {
  const sel = (id) => h("select", { id });
  const el = {
    status: h("span", { id: "sweep-status" }),
    counts: h("p", { id: "sweep-counts", class: "small" }),
    cancel: h("button", { type: "button", id: "cancel-sweep", class: "danger" }, "Cancel sweep"),
    metric: sel("heat-metric"), x: sel("heat-x"), y: sel("heat-y"),
    heat: h("div", { class: "heat-box" }), points: h("div", {}),
  };
  view.append(
    h("div", { class: "title-row" }, h("h1", {}, sw.name), h("span", { class: "mono muted" }, sw.id), el.status,
      h("a", { class: "button", id: "compare-sweep", href: `#/compare/sweep/${sw.id}` }, "Compare runs"), el.cancel),
    h("p", { class: "muted" }, sw.preset ? ["preset ", h("a", { href: `#/paper/${sw.preset}` }, sw.preset), " · "] : null,
      `created ${when(sw.created_at)}`, sw.evaluate ? " · each run evaluated (AutoAttack) once trained" : ""),
    el.counts,
    h("h3", {}, "Metric over two fields"),
    h("div", { class: "row" }, h("label", {}, "metric ", el.metric), h("label", {}, "columns ", el.x), h("label", {}, "rows ", el.y)),
    el.heat,
    h("h3", {}, "Points"), el.points);
  return el;
}
// Keep a select's options (and its choice, or `fallback` the first time) in step with `options`.
function setOptions(select, options, fallback) {
  const old = select.value;
  if (JSON.stringify([...select.options].map((o) => o.value)) !== JSON.stringify(options)) {
    select.replaceChildren(...options.map((o) => h("option", { value: o }, o || "(none)")));
  }
  select.value = options.includes(old) && old !== "" ? old : fallback;
}
function renderSweep(el, sw) {
  el.status.replaceChildren(statusBadge(sw.status));
  el.status.dataset.status = sw.status;
  el.counts.replaceChildren(...Object.entries(sw.counts).sort().map(([k, n]) =>
    h("span", { class: `badge ${k}`, "data-count": k }, `${n} ${k}`)), " ");
  el.cancel.hidden = sw.status !== "running";
  const runs = sweepRuns(sw);
  const fields = differingFields(runs.map((r) => r.spec));
  const metrics = [...new Set(runs.flatMap((r) => Object.keys(r.metrics)))];
  const prefer = ["tightness", "eval_aa_36", "test_acc", "test_loss"].find((m) => metrics.includes(m)) || metrics[0] || "";
  setOptions(el.metric, metrics, prefer);
  setOptions(el.x, fields, fields[0] || "");
  setOptions(el.y, ["", ...fields.filter((f) => f !== el.x.value)], fields.find((f) => f !== el.x.value) || "");
  el.heat.replaceChildren(el.metric.value && el.x.value ? heatmap(runs, el.metric.value, el.x.value, el.y.value)
    : h("p", { class: "muted" }, "No metric yet, or the runs do not differ in any field."));
  el.points.replaceChildren(pointsTable(runs, fields, metrics));
}

async function sweepPage(view, id, signal) {
  let sw = await api(`/v1/sweeps/${encodeURIComponent(id)}`, { signal });
  const el = sweepLayout(view, sw);
  for (const s of [el.metric, el.x, el.y]) s.addEventListener("change", () => renderSweep(el, sw));
  el.cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel every unfinished job of ${sw.id}?`)) return;
    try { sw = await api(`/v1/sweeps/${sw.id}/cancel`, { method: "POST" }); renderSweep(el, sw); } catch (err) { showError(err); }
  });
  renderSweep(el, sw);
  await pollLoop(async () => {
    sw = await api(`/v1/sweeps/${sw.id}`, { signal });
    renderSweep(el, sw);
  }, signal, () => sw.status !== "running");
}
