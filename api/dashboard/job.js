// #/jobs/ID: one job's live curves, progress, log, summary and files, followed over its event stream.
"use strict";

// ---- #/jobs/ID -----------------------------------------------------------------------------------
// y tick labels: 3 significant digits, exponents for small or large values (uPlot's default rounds
// a learning rate of 1e-3 to "0")
const tickLabel = (v) => (v === 0 ? "0" : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-2 ? v.toExponential(1) : String(Number(v.toPrecision(3))));
function makeChart(el, title, series, { log = false, yLabel = "" } = {}) {
  const width = Math.max(280, el.clientWidth || 420);
  const opts = {
    title, width, height: 220,
    scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
    // whole epochs on the x axis (uPlot would otherwise tick at 1.5, 2.5 for short runs)
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, { label: yLabel, size: 60, values: (u, splits) => splits.map((v) => (v === null ? "" : tickLabel(v))) }],
    legend: { live: false },
    series: [{ label: "epoch" }, ...series.map(([label, color]) => ({
      label, stroke: color, width: 2, spanGaps: true, points: { show: true, size: 5 },
    }))],
  };
  const data = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, data, el);
  return { plot, el, keys: series.map((s) => s[2]) };
}
function chartData(chart, rows) {
  const data = [rows.map((r) => r.epoch), ...chart.keys.map((k) => rows.map((r) => {
    const v = r[k];
    return v === null || v === undefined || !Number.isFinite(v) ? null : v;
  }))];
  chart.plot.setData(data);
  chart.el.dataset.points = String(rows.length);
  chart.el.classList.toggle("empty", rows.length === 0);
}

// The page's elements (filled by renderJob) appended to `view`: header, progress, boxes, charts.
function jobLayout(view, job) {
  const el = {
    status: h("span", { id: "job-status" }),
    bar: progressBar(job.progress, job.status),
    progressText: h("span", { class: "small", id: "job-progress" }),
    cancel: h("button", { type: "button", id: "cancel-job", class: "danger" }, "Cancel"),
    remove: h("button", { type: "button", id: "delete-job", class: "secondary" }, "Delete"),
    modelLink: h("a", { id: "model-link", class: "button", href: `#/models/${job.id}`, hidden: true }, "Certify inputs →"),
    summary: h("div", { class: "summary", id: "job-summary" }),
    facts: h("div", { id: "job-facts" }),
    errorBox: h("pre", { class: "job-error", id: "job-error", hidden: true }),
    artifacts: h("ul", { class: "artifacts", id: "artifacts" }),
    logBox: h("pre", { class: "log", id: "log" }),
    charts: h("div", { class: "charts" }),
    evalBox: h("div", { id: "eval-table" }),
  };
  view.append(
    h("div", { class: "title-row" }, h("h1", { class: "mono" }, job.id), el.status, el.modelLink, el.cancel, el.remove),
    h("p", { class: "muted" }, job.kind === "evaluate" ? ["evaluation of model ", h("a", { href: `#/models/${job.model_id}`, class: "mono" }, job.model_id)]
      : job.kind === "import" ? ["imported model · ", specLabel(job.spec)] : specLabel(job.spec), ` · created ${when(job.created_at)}`),
    h("div", { class: "progress-row" }, el.bar, el.progressText),
    el.errorBox,
    el.evalBox,
    el.charts,
    h("div", { class: "two-col" },
      h("section", {}, h("h3", {}, "Run"), el.facts, h("h3", {}, "Summary"), el.summary, h("h3", {}, "Artifacts"), el.artifacts),
      h("section", {}, h("h3", {}, "Log (last 200 lines)"), el.logBox)),
  );
  return el;
}
// A training job's curves: loss, accuracy (classifiers only) and learning rate per epoch.
function jobCharts(charts, classify) {
  const lossEl = h("div", { class: "chart", id: "chart-loss" });
  const accEl = h("div", { class: "chart", id: "chart-acc" });
  const lrEl = h("div", { class: "chart", id: "chart-lr" });
  charts.append(lossEl, ...(classify ? [accEl] : []), lrEl);
  const plots = [makeChart(lossEl, "loss", [["train", COLORS.train, "train_loss"], ["test", COLORS.test, "test_loss"]], { log: true })];
  if (classify) {
    plots.push(makeChart(accEl, "accuracy (%)", [
      ["train", COLORS.train, "train_acc"], ["test", COLORS.test, "test_acc"],
      ["cert 36/255", COLORS.cert36, "cert_acc_36"], ["cert 72/255", COLORS.cert72, "cert_acc_72"],
      ["cert 108/255", COLORS.cert108, "cert_acc_108"],
    ]));
  }
  plots.push(makeChart(lrEl, "learning rate", [["lr", COLORS.lr, "lr"]]));
  return plots;
}
// Show `state` (the job record, its metric rows by epoch, log lines, latest progress) in `el`.
function renderJob(el, state, plots) {
  const j = state.job;
  el.status.replaceChildren(statusBadge(j.status, j.cancel_requested));
  el.status.dataset.status = j.status;
  const p = state.progress;
  setBar(el.bar, j.status === "succeeded" ? 1 : p ? p.fraction : 0);
  el.bar.querySelector(".bar").className = `bar ${j.status}`;
  el.progressText.textContent = p
    ? `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps}` + (j.status === "running" ? ` · ETA ${duration(p.eta_s)}` : "")
      + (p.loss !== undefined ? ` · loss ${fmt(p.loss, 4)}` : "")
    : j.status === "queued" ? "waiting for a worker" : "";
  const finished = ["succeeded", "failed", "cancelled"].includes(j.status);
  el.cancel.hidden = finished;
  el.cancel.disabled = !!j.cancel_requested;
  el.remove.hidden = !finished;
  el.modelLink.hidden = !(["train", "import"].includes(j.kind) && j.status === "succeeded");
  el.errorBox.hidden = !j.error;
  el.errorBox.textContent = j.error || "";
  const rows = [...state.rows.values()].sort((a, b) => a.epoch - b.epoch);
  for (const c of plots) chartData(c, rows);
  el.summary.replaceChildren(summaryTable(j, rows[rows.length - 1]));
  el.facts.replaceChildren(factsTable(j, state.sweep));
  el.evalBox.replaceChildren(...(j.result && j.result.autoattack_acc ? [evalTable(j.result)] : []));
  const atBottom = el.logBox.scrollHeight - el.logBox.scrollTop - el.logBox.clientHeight < 30;
  el.logBox.textContent = state.log.slice(-200).join("\n");
  if (atBottom) el.logBox.scrollTop = el.logBox.scrollHeight;
  state.dirty = false;
}
// One event of the job's stream into `state`; a state change also re-reads the job's record.
function applyJobEvent(state, kind, data, refresh) {
  if (kind === "metrics") state.rows.set(data.epoch, data);
  else if (kind === "progress") state.progress = data;
  else if (kind === "log") state.log.push(data.line);
  else if (kind === "state") {
    state.job = { ...state.job, status: data.status, cancel_requested: data.cancel_requested ?? state.job.cancel_requested };
    if (data.error) state.job.error = data.error;
    // the event holds the new status only; the record adds start/finish times, result and error
    refresh();
  }
}
async function loadArtifacts(list, jobId, signal) {
  const page = await api(`/v1/jobs/${jobId}/artifacts`, { signal });
  list.replaceChildren(...page.items.map((a) => h("li", {},
    h("a", { href: "#", "data-name": a.name, onclick: (e) => { e.preventDefault(); download(a.url, a.name).catch(showError); } }, a.name),
    h("span", { class: "muted small" }, ` ${(a.size / 1024).toFixed(1)} KiB`))));
  if (!page.items.length) list.append(h("li", { class: "muted" }, "none yet"));
}

async function jobPage(view, id, signal) {
  const job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
  const isTrain = job.kind === "train";
  const card = isTrain ? (await getCatalog(signal)).card(job.spec.model) : null;
  const el = jobLayout(view, job);
  const plots = isTrain ? jobCharts(el.charts, Boolean(card && card.task === "classifier")) : [];
  const state = { job, rows: new Map(), log: [], progress: job.progress, dirty: false, sweep: null };
  const render = () => renderJob(el, state, plots);
  let frame = null;
  const schedule = () => { state.dirty = true; if (!frame) frame = setTimeout(() => { frame = null; render(); }, 100); };
  const refresh = () => api(`/v1/jobs/${job.id}`, { signal }).then((j) => { state.job = j; schedule(); }).catch(() => {});

  el.cancel.addEventListener("click", async () => {
    try { state.job = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }); schedule(); } catch (err) { showError(err); }
  });
  el.remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${job.id} and its files?`)) return;
    try { await api(`/v1/jobs/${job.id}`, { method: "DELETE" }); location.hash = "#/jobs"; } catch (err) { showError(err); }
  });

  render();
  loadArtifacts(el.artifacts, job.id, signal).catch(showError);
  api(`/v1/jobs/${job.id}/sweep`, { signal }).then((r) => { state.sweep = r.sweep; schedule(); }).catch(showError);
  await followEvents(`/v1/jobs/${job.id}/events`, (kind, data) => {
    applyJobEvent(state, kind, data, refresh);
    schedule();
  }, signal, () => ["succeeded", "failed", "cancelled"].includes(state.job.status));
  if (signal.aborted) return;
  // The stream has ended: the job is finished. Read its final record (result, error) and files.
  state.job = await api(`/v1/jobs/${job.id}`, { signal });
  render();
  await loadArtifacts(el.artifacts, job.id, signal);
}
// An evaluation job's result: accuracy under AutoAttack beside the certified accuracy, per radius.
// A certified input that the attack broke would be a bug in the bound: shown, never hidden.
function evalTable(r) {
  const keys = Object.keys(r.autoattack_acc).sort((a, b) => a - b);
  return h("table", { class: "jobs" },
    h("thead", {}, h("tr", {}, [`l2 radius (/255, pixel space)`, "certified acc", "AutoAttack acc", "certified but broken"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {},
      h("tr", {}, h("td", {}, "0 (clean)"), h("td", {}, pct(r.clean_acc)), h("td", {}, pct(r.clean_acc)), h("td", {}, "–")),
      keys.map((k) => h("tr", {}, h("td", {}, k), h("td", {}, pct(r.certified_acc?.[k])), h("td", {}, pct(r.autoattack_acc[k])),
        h("td", {}, String(r.certificate_violations?.[k] ?? "–"))))),
    h("caption", { class: "muted small" }, `${r.n} test inputs · AutoAttack ${r.version}${r.attacks ? " (" + r.attacks.join(", ") + ")" : ""}`));
}
function summaryTable(job, last) {
  const rows = [];
  const add = (k, v) => rows.push(h("tr", {}, h("th", {}, k), h("td", {}, v)));
  add("status", job.status);
  add("started", when(job.started_at));
  add("finished", when(job.finished_at));
  if (job.attempt > 1) add("attempts", job.attempt);
  if (job.device) add("ran on", `${job.device} · ${job.host || "?"} · ${job.worker || "?"}`);
  if ((job.resources?.devices || 1) > 1) add("devices asked", job.resources.devices);
  const r = job.result || {};
  const src = Object.keys(r).length ? r : last || {};
  for (const [k, v] of Object.entries(src)) {
    if (typeof v === "number") add(k, Number.isInteger(v) ? v : fmt(v, 4));
    else if (typeof v === "string" || typeof v === "boolean") add(k, String(v));
    else if (Array.isArray(v) && k !== "classes") add(k, v.join(", "));
    // objects (per-radius accuracies of an evaluation) have their own table above
  }
  return h("table", { class: "kv" }, h("tbody", {}, rows));
}
// What a researcher reads a run by: its name, tags and note (when the API has them), the training
// settings, the bound (gamma, and the verified float64 bound of the saved weights), and its links:
// the sweep it belongs to, and the model an evaluation or import is of.
function factsTable(job, sweep) {
  const rows = [];
  const add = (k, v, id) => rows.push(h("tr", { "data-fact": id || k }, h("th", {}, k), h("td", {}, v)));
  if (job.name) add("name", job.name);
  if (job.tags && job.tags.length) add("tags", job.tags.map((t) => h("span", { class: "tag" }, t)));
  if (job.note) add("note", h("span", { class: "note" }, job.note));
  const s = job.spec || {};
  if (job.kind === "train") {
    add("lr", show(s.lr));
    add("seed", show(s.seed));
    add("loss", show(s.loss));
    add("epochs", show(s.epochs));
  }
  if (job.kind !== "evaluate") add("gamma", s.gamma === null || s.gamma === undefined ? "none (unbounded)" : show(s.gamma));
  const bound = job.result?.lipschitz_bound?.verified;
  if (typeof bound === "number") add("verified bound", fmt(bound, 6), "verified-bound");
  const modelId = job.kind === "evaluate" ? job.model_id : job.kind === "import" ? job.id : null;
  if (modelId) add("model", h("a", { href: `#/models/${modelId}`, class: "mono", id: "job-model" }, modelId));
  if (sweep) {
    const point = Object.entries(sweep.point || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    add("sweep", [h("a", { href: `#/sweeps/${sweep.id}`, class: "mono", id: "job-sweep" }, sweep.id), ` ${sweep.name}${point ? " · " + point : ""}`]);
  }
  return h("table", { class: "kv" }, h("tbody", {}, rows));
}
