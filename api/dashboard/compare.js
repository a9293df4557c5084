// #/compare/ID,ID,... and #/compare/sweep/SWEEP_ID: several runs side by side. Their curves overlaid
// per metric (the job page's uPlot charts, one series per run), a table of runs x (spec fields that
// differ + final metrics), and the spec diff. Finished runs are read once; a page with a run still
// going re-reads every POLL_MS until all have finished.
"use strict";

// The metrics drawn, in this order, when any run has them (per-epoch rows of GET /v1/jobs/ID/metrics).
const OVERLAY = [
  ["train_loss", "train loss", true], ["test_loss", "test loss", true], ["train_acc", "train accuracy (%)"],
  ["test_acc", "test accuracy (%)"], ["cert_acc_36", "certified acc. at 36/255 (%)"],
  ["cert_acc_72", "certified acc. at 72/255 (%)"], ["cert_acc_108", "certified acc. at 108/255 (%)"], ["lr", "learning rate"],
];

async function compareIds(parts, signal) {
  if (parts[1] === "sweep" && parts[2]) {
    const sw = await api(`/v1/sweeps/${encodeURIComponent(parts[2])}`, { signal });
    return sw.jobs.filter((j) => j.role === "train" && j.status !== "deleted").map((j) => j.job_id);
  }
  return [...new Set((parts[1] || "").split(",").filter(Boolean))];
}
// Each run's record and its per-epoch metrics: [{ job, rows, color, label }].
async function loadRuns(ids, signal) {
  return Promise.all(ids.map(async (id, i) => {
    const path = `/v1/jobs/${encodeURIComponent(id)}`;
    const [job, metrics] = await Promise.all([api(path, { signal }), api(`${path}/metrics`, { signal })]);
    return { job, rows: metrics.items, color: PALETTE[i % PALETTE.length], label: job.name || job.id };
  }));
}

// One chart per metric that some run has, each run a series in its colour; x: the union of epochs.
const overlayKeys = (runs) => OVERLAY.filter(([key]) => runs.some((r) => r.rows.some((row) => Number.isFinite(row[key]))));
function overlayCharts(box, runs) {
  box.replaceChildren();
  const keys = overlayKeys(runs);
  const els = keys.map(([key]) => h("div", { class: "chart", id: `overlay-${key}`, "data-key": key }));
  // every cell of the grid first: a chart takes its width from its cell when it is made
  box.append(...els);
  return keys.map(([key, title, log], i) => ({
    key, chart: makeChart(els[i], title, runs.map((r) => [r.label, r.color, r.job.id]), { log }),
  }));
}
function overlayData({ chart, key }, runs) {
  const epochs = [...new Set(runs.flatMap((r) => r.rows.map((row) => row.epoch)))].sort((a, b) => a - b);
  const series = runs.map((r) => {
    const by = new Map(r.rows.map((row) => [row.epoch, row[key]]));
    return epochs.map((e) => (Number.isFinite(by.get(e)) ? by.get(e) : null));
  });
  chart.plot.setData([epochs, ...series]);
  chart.el.dataset.points = String(epochs.length);
  chart.el.dataset.series = String(series.filter((ys) => ys.some((y) => y !== null)).length);
  chart.el.classList.toggle("empty", epochs.length === 0);
}

// Runs x (spec fields that differ + final metrics); the raw numbers are in each cell's data-value.
function runsTable(runs) {
  const diff = differingFields(runs.map((r) => r.job.spec));
  const metrics = [...new Set(runs.flatMap((r) => Object.keys(finalMetrics(r.job.result, r.job.metrics))))];
  const head = ["run", "status", ...diff, ...metrics];
  return h("table", { class: "jobs sortable", id: "compare-table" },
    h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
    h("tbody", {}, runs.map((r) => {
      const m = finalMetrics(r.job.result, r.job.metrics);
      const flag = runFlag(r.job.spec, r.job.result);
      return h("tr", { "data-job": r.job.id },
        h("td", {}, h("span", { class: "swatch", "data-color": r.color }), " ",
          h("a", { href: `#/jobs/${r.job.id}`, class: "mono" }, r.label), flag ? h("span", { class: "flag" }, flag) : null),
        h("td", {}, statusBadge(r.job.status, r.job.cancel_requested)),
        diff.map((k) => h("td", { "data-key": k }, show(r.job.spec[k]))),
        metrics.map((k) => numCell(k, m[k])));
    })));
}
// Field by field: the differing ones first (one column per run), then those all runs share.
function specDiff(runs) {
  const specs = runs.map((r) => r.job.spec || {});
  const diff = differingFields(specs);
  const same = Object.keys(specs[0] || {}).filter((k) => !diff.includes(k));
  return h("div", { id: "spec-diff" },
    diff.length
      ? h("table", { class: "jobs" },
        h("thead", {}, h("tr", {}, h("th", {}, "field"), runs.map((r) => h("th", { class: "mono" }, r.label)))),
        h("tbody", {}, diff.map((k) => h("tr", { "data-field": k }, h("th", {}, k), specs.map((s) => h("td", { class: "changed" }, show(s[k])))))))
      : h("p", { class: "muted" }, "The runs' specs are the same."),
    h("details", {}, h("summary", {}, `${same.length} fields the same in every run`),
      h("table", { class: "kv" }, h("tbody", {}, same.map((k) => h("tr", {}, h("th", {}, k), h("td", {}, show(specs[0][k]))))))));
}

async function comparePage(view, parts, signal) {
  const ids = await compareIds(parts, signal);
  view.append(h("h1", { class: "page-title" }, `Compare ${ids.length} runs`));
  if (ids.length < 1) {
    view.append(h("p", { class: "muted" }, "Tick runs in the ", h("a", { href: "#/jobs" }, "job list"), " or open a sweep to compare them."));
    return;
  }
  const charts = h("div", { class: "charts", id: "overlay-charts" });
  const table = h("div", {});
  const diff = h("div", {});
  view.append(h("h3", {}, "Final numbers"), table, h("h3", {}, "Curves"), charts, h("h3", {}, "Spec diff"), diff);
  let runs = [];
  let plots = [];
  const refresh = async () => {
    runs = await loadRuns(ids, signal);
    // a metric's first epoch adds its chart
    if (overlayKeys(runs).length !== plots.length) plots = overlayCharts(charts, runs);
    for (const p of plots) overlayData(p, runs);
    table.replaceChildren(runsTable(runs));
    for (const s of table.querySelectorAll(".swatch")) s.style.background = s.dataset.color;
    diff.replaceChildren(specDiff(runs));
  };
  await pollLoop(refresh, signal, () => runs.every((r) => FINISHED_STATES.includes(r.job.status)));
}
