// The lbdn dashboard: a small single-page app over the /v1 HTTP API (no build step, no framework).
// Pages (location.hash): #/jobs, #/new, #/jobs/ID, #/models, #/models/ID.
//
// Live data:
// - the job page follows GET /v1/jobs/ID/events (Server-Sent Events). EventSource cannot send an
//   Authorization header, and a key in the URL would end up in logs, so the stream is read with
//   fetch() and parsed here (the format is a few lines of text: `id:`, `event:`, `data:`). It starts
//   at event 0, so one mechanism gives the history and the live tail; after a dropped connection it
//   resumes from the last id it saw.
// - the job list polls GET /v1/jobs every 2 s while the tab is visible: there is no tenant-wide
//   stream, and one stream per listed job would use up the browser's six connections per origin
//   (HTTP/1.1) that the job page's own stream and the API calls need. One small indexed query per
//   2 s is cheap, and the list shows progress, which changes only every few seconds anyway.
"use strict";

const KEY_STORE = "lbdn.apiKey";
const POLL_MS = 2000;
const COLORS = {
  train: "#1f77b4", test: "#d62728", cert36: "#2ca02c", cert72: "#ff7f0e", cert108: "#9467bd", lr: "#17becf",
};
// What models, layers and datasets go together comes from the server's model cards (GET /v1/catalog),
// the records that validate specs there: fetched once per page load.
let catalogPromise = null;
async function getCatalog(signal) {
  if (!catalogPromise) catalogPromise = api("/v1/catalog", { signal }).catch((e) => { catalogPromise = null; throw e; });
  const c = await catalogPromise;
  return {
    ...c,
    card: (name) => c.models.find((m) => m.name === name),
    family: (name) => c.families.find((f) => f.name === name),
    datasets: (inputs) => c.datasets.filter((d) => d.inputs === inputs).map((d) => d.name),
  };
}

// ---- small DOM helpers -----------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel, root = document) => root.querySelector(sel);
const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "–" : `${Number(x).toFixed(1)} %`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
    : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
function specLabel(spec) {
  if (!spec) return "";
  const parts = [spec.model, spec.layer, spec.scale].filter(Boolean).join("-");
  const gamma = spec.gamma === null || spec.gamma === undefined ? "no bound" : `γ=${spec.gamma}`;
  return `${parts}${spec.lln ? "-LLN" : ""} · ${gamma} · ${spec.dataset}`;
}

// ---- errors: problem+json -> one readable sentence ---------------------------------------------
class ApiError extends Error {
  constructor(status, title, detail) {
    super(`${title} (${status}): ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}
async function toError(res) {
  let title = res.statusText || "Error", detail = "";
  const type = res.headers.get("content-type") || "";
  try {
    if (type.includes("json")) {
      const body = await res.json();
      title = body.title || title;
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    } else {
      detail = (await res.text()).slice(0, 300);
    }
  } catch (_) { /* an unreadable body: the status says enough */ }
  return new ApiError(res.status, title, detail || "no details given");
}
function showError(err) {
  if (err && err.name === "AbortError") return;
  const text = err instanceof ApiError ? err.message
    : err instanceof TypeError ? `Could not reach the server (${err.message}).` : String(err && err.message || err);
  $("#error-text").textContent = text;
  $("#error").hidden = false;
  if (err instanceof ApiError && err.status === 401) askForKey(err.detail);
}
function clearError() { $("#error").hidden = true; }

// ---- the API key (this tab only) and calls -----------------------------------------------------
const getKey = () => sessionStorage.getItem(KEY_STORE) || "";
function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}
async function api(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders({ Accept: "application/json", ...headers }), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) init.body = body;
  const res = await fetch(path, init);
  if (!res.ok) throw await toError(res);
  return res.status === 204 ? null : res.json();
}
function updateKeyButton() {
  $("#key-button").textContent = getKey() ? "API key ✓" : "API key";
}
function askForKey(reason) {
  const dialog = $("#key-dialog");
  if (reason) $("#key-reason").textContent = `${reason}. The key is kept in this tab only (sessionStorage).`;
  $("#key-input").value = getKey();
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
}
function setupKeyDialog() {
  $("#key-button").addEventListener("click", () => askForKey());
  $("#key-form").addEventListener("submit", () => {
    const key = $("#key-input").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    updateKeyButton();
    clearError();
    route();
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("#key-input").value = "";
    updateKeyButton();
    $("#key-dialog").close();
    route();
  });
  $("#key-cancel").addEventListener("click", () => $("#key-dialog").close());
  $("#error-close").addEventListener("click", clearError);
  updateKeyButton();
}

// ---- Server-Sent Events over fetch (so the Bearer key can be sent) -------------------------------
async function followEvents(path, onEvent, signal, isDone) {
  let after = 0;
  let failures = 0;
  while (!signal.aborted) {
    let ended = false;
    try {
      const res = await fetch(`${path}?after=${after}`, {
        headers: authHeaders({ Accept: "text/event-stream" }), signal, cache: "no-store",
      });
      if (!res.ok) throw await toError(res);
      failures = 0;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { ended = true; break; }
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = { event: "message", data: [], id: null };
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const i = line.indexOf(":");
            const field = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (field === "event") ev.event = val;
            else if (field === "data") ev.data.push(val);
            else if (field === "id") ev.id = val;
          }
          if (ev.id !== null) after = Number(ev.id);
          if (ev.data.length) onEvent(ev.event, JSON.parse(ev.data.join("\n")));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status < 500) throw err;  // 401/404: retrying will not help
      failures += 1;
    }
    // The server ends the stream once the job has finished and everything was sent; a stream cut
    // earlier (a proxy's idle timeout) is resumed from the last event seen.
    if (ended && isDone()) return;
    await sleep(Math.min(1000 * 2 ** failures, 15000), signal);
  }
}
function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal && signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// ---- downloads need the key too, so they go through fetch and a blob URL ------------------------
async function download(url, name) {
  const res = await fetch(url, { headers: authHeaders() });
  if (!res.ok) throw await toError(res);
  const href = URL.createObjectURL(await res.blob());
  const a = h("a", { href, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

// ---- router --------------------------------------------------------------------------------------
let pageAbort = new AbortController();
function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  const signal = pageAbort.signal;
  const parts = (location.hash.replace(/^#\/?/, "") || "jobs").split("/").map(decodeURIComponent);
  const view = $("#view");
  view.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.nav === parts[0] && parts.length === 1);
  }
  const page = parts[0] === "jobs" && parts[1] ? jobPage(view, parts[1], signal)
    : parts[0] === "jobs" ? jobsPage(view, signal)
    : parts[0] === "new" ? newJobPage(view, signal)
    : parts[0] === "models" && parts[1] ? modelPage(view, parts[1], signal)
    : parts[0] === "models" ? modelsPage(view, signal)
    : Promise.resolve(view.append(h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Jobs"))));
  page.catch(showError);
}

function statusBadge(status, cancelRequested) {
  const label = cancelRequested && status === "running" ? "cancelling" : status;
  return h("span", { class: `badge ${status}`, "data-status": status, text: label });
}
function progressBar(progress, status) {
  const frac = status === "succeeded" ? 1 : progress ? progress.fraction : 0;
  return h("div", { class: "progress", title: `${Math.round(100 * frac)} %` },
    h("div", { class: `bar ${status}`, style: null, "data-frac": frac }));
}
function setBar(el, frac) {
  const bar = el.querySelector(".bar");
  bar.style.width = `${Math.max(0, Math.min(1, frac)) * 100}%`;
}

// ---- #/jobs --------------------------------------------------------------------------------------
async function jobsPage(view, signal) {
  const filter = h("select", { id: "status-filter" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s || "all")));
  const body = h("tbody");
  const updated = h("span", { class: "muted small" });
  view.append(
    h("div", { class: "title-row" }, h("h1", {}, "Jobs"), h("label", {}, "status ", filter),
      h("a", { class: "button", href: "#/new" }, "New job"), updated),
    h("table", { class: "jobs", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["job", "kind", "model", "status", "progress", "epoch", "test loss / acc", "created"]
        .map((t) => h("th", {}, t)))),
      body),
  );
  filter.addEventListener("change", () => refresh());
  async function refresh() {
    const q = filter.value ? `?status=${filter.value}&limit=100` : "?limit=100";
    const page = await api(`/v1/jobs${q}`, { signal });
    body.replaceChildren(...page.items.map(jobRow));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No jobs yet: ", h("a", { href: "#/new" }, "submit one"), ".")));
    updated.textContent = `updated ${new Date().toLocaleTimeString()} (every ${POLL_MS / 1000} s)`;
  }
  while (!signal.aborted) {
    if (!document.hidden) {
      try { await refresh(); clearError(); } catch (err) { showError(err); if (err.status === 401) return; }
    }
    await sleep(POLL_MS, signal);
  }
}
function jobRow(job) {
  const m = job.metrics || {};
  const bar = progressBar(job.progress, job.status);
  setBar(bar, job.status === "succeeded" ? 1 : job.progress ? job.progress.fraction : 0);
  const p = job.progress;
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
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
async function newJobPage(view, signal) {
  const idem = crypto.randomUUID();  // one per form: a double click or a retry does not make two jobs
  const sel = (name, options, value) => h("select", { name, id: `f-${name}` },
    options.map((o) => h("option", { value: o, selected: o === value }, o)));
  const cat = await getCatalog(signal);
  // The quick 1-D model (seconds on a CPU) is preselected.
  const quick = cat.models.find((m) => m.inputs === "vector") || cat.models[0];
  const model = sel("model", cat.models.map((m) => m.name), quick.name);
  const layer = h("select", { name: "layer", id: "f-layer" });
  const scale = h("select", { name: "scale", id: "f-scale" });
  const dataset = h("select", { name: "dataset", id: "f-dataset" });
  const num = (name, value, attrs = {}) => h("input", { name, id: `f-${name}`, type: "number", value, ...attrs });
  const gamma = num("gamma", "1.0", { step: "any", min: "0" });
  const epochs = num("epochs", "20", { min: "1", step: "1" });
  const lr = num("lr", "0.01", { step: "any", min: "0" });
  const seed = num("seed", "123", { min: "0", step: "1" });
  const loss = sel("loss", ["(default)", "xent", "multimargin", "mse"], "(default)");
  const certAcc = h("input", { type: "checkbox", name: "cert_acc", id: "f-cert_acc" });
  const lln = h("input", { type: "checkbox", name: "LLN", id: "f-LLN" });
  const dataPath = h("input", { name: "data_path", id: "f-data_path", placeholder: "folder in the server's data dir" });
  const preview = h("pre", { class: "preview", id: "spec-preview" });
  const submit = h("button", { type: "submit", id: "submit-job" }, "Submit");

  function fill(select, options, keep) {
    const old = keep ? select.value : null;
    select.replaceChildren(...options.map((o) => h("option", { value: o }, o)));
    if (old && options.includes(old)) select.value = old;
  }
  function syncChoices() {
    const card = cat.card(model.value);
    // an untouched layer shows the model's first family, not its (unbounded) default
    fill(layer, card.layers, layer.dataset.touched);
    fill(scale, card.scales, true);
    fill(dataset, cat.datasets(card.inputs), true);
    dataPath.closest("label").hidden = dataset.value !== "image_folder";
    certAcc.closest("label").hidden = card.task !== "classifier";
    lln.closest("label").hidden = !card.lln || "lln" in card.forced;
    gamma.disabled = !bounded();
    showPreview();
  }
  function bounded() {
    const f = cat.family(layer.value);
    return !f || f.bounded;
  }
  function spec() {
    const s = { model: model.value, layer: layer.value, scale: scale.value, dataset: dataset.value,
      epochs: Number(epochs.value), lr: Number(lr.value), seed: Number(seed.value) };
    if (bounded()) s.gamma = Number(gamma.value);
    if (loss.value !== "(default)") s.loss = loss.value;
    const card = cat.card(model.value);
    if (card.task === "classifier" && certAcc.checked) s.cert_acc = true;
    if (card.lln && !("lln" in card.forced) && lln.checked) s.LLN = true;
    if (dataset.value === "image_folder" && dataPath.value) s.data_path = dataPath.value;
    return s;
  }
  function showPreview() {
    preview.textContent = "POST /v1/jobs\n" + JSON.stringify({ kind: "train", spec: spec() }, null, 2);
  }
  const field = (label, input, hint) => h("label", {}, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
  const form = h("form", { id: "new-job", class: "grid-form" },
    field("model", model, `${quick.name}: ${quick.about} (seconds on a CPU)`),
    field("layer", layer),
    field("scale", scale),
    field("dataset", dataset),
    field("data_path", dataPath),
    field("gamma", gamma, "the network's l2 Lipschitz bound"),
    field("epochs", epochs),
    field("lr", lr),
    field("seed", seed),
    field("loss", loss),
    h("label", { class: "check" }, certAcc, h("span", {}, "certified accuracy each epoch (36/72/108 /255)")),
    h("label", { class: "check" }, lln, h("span", {}, "last-layer normalisation (LLN)")),
    h("div", { class: "row" }, submit),
  );
  layer.addEventListener("change", () => { layer.dataset.touched = "1"; syncChoices(); });
  model.addEventListener("change", () => { delete layer.dataset.touched; syncChoices(); });
  form.addEventListener("input", showPreview);
  form.addEventListener("change", syncChoices);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: { kind: "train", spec: spec() },
        headers: { "Idempotency-Key": idem }, signal });
      clearError();
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showError(err);
    } finally {
      submit.disabled = false;
    }
  });
  view.append(h("h1", { class: "page-title" }, "New training job"), h("div", { class: "two-col" }, form, h("div", {}, h("h3", {}, "Request"), preview)));
  syncChoices();
}

// ---- #/jobs/ID -----------------------------------------------------------------------------------
function makeChart(el, title, series, { log = false, yLabel = "" } = {}) {
  const width = Math.max(280, el.clientWidth || 420);
  const opts = {
    title, width, height: 220,
    scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
    // whole epochs on the x axis (uPlot would otherwise tick at 1.5, 2.5 for short runs)
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, { label: yLabel, size: 60 }],
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

async function jobPage(view, id, signal) {
  const job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
  const isTrain = job.kind === "train";
  const card = isTrain ? (await getCatalog(signal)).card(job.spec.model) : null;
  const classify = Boolean(card && card.task === "classifier");
  const status = h("span", { id: "job-status" });
  const bar = progressBar(job.progress, job.status);
  const progressText = h("span", { class: "small", id: "job-progress" });
  const cancel = h("button", { type: "button", id: "cancel-job", class: "danger" }, "Cancel");
  const remove = h("button", { type: "button", id: "delete-job", class: "secondary" }, "Delete");
  const modelLink = h("a", { id: "model-link", class: "button", href: `#/models/${job.id}`, hidden: true }, "Certify inputs →");
  const summary = h("div", { class: "summary", id: "job-summary" });
  const errorBox = h("pre", { class: "job-error", id: "job-error", hidden: true });
  const artifacts = h("ul", { class: "artifacts", id: "artifacts" });
  const logBox = h("pre", { class: "log", id: "log" });
  const charts = h("div", { class: "charts" });
  const evalBox = h("div", { id: "eval-table" });

  view.append(
    h("div", { class: "title-row" }, h("h1", { class: "mono" }, job.id), status, modelLink, cancel, remove),
    h("p", { class: "muted" }, job.kind === "evaluate" ? `evaluation of model ${job.model_id}` : specLabel(job.spec),
      ` · created ${when(job.created_at)}`),
    h("div", { class: "progress-row" }, bar, progressText),
    errorBox,
    evalBox,
    charts,
    h("div", { class: "two-col" },
      h("section", {}, h("h3", {}, "Summary"), summary, h("h3", {}, "Artifacts"), artifacts),
      h("section", {}, h("h3", {}, "Log (last 200 lines)"), logBox)),
  );

  const plots = [];
  if (isTrain) {
    const lossEl = h("div", { class: "chart", id: "chart-loss" });
    const accEl = h("div", { class: "chart", id: "chart-acc" });
    const lrEl = h("div", { class: "chart", id: "chart-lr" });
    charts.append(lossEl, ...(classify ? [accEl] : []), lrEl);
    plots.push(makeChart(lossEl, "loss", [["train", COLORS.train, "train_loss"], ["test", COLORS.test, "test_loss"]], { log: true }));
    if (classify) {
      plots.push(makeChart(accEl, "accuracy (%)", [
        ["train", COLORS.train, "train_acc"], ["test", COLORS.test, "test_acc"],
        ["cert 36/255", COLORS.cert36, "cert_acc_36"], ["cert 72/255", COLORS.cert72, "cert_acc_72"],
        ["cert 108/255", COLORS.cert108, "cert_acc_108"],
      ]));
    }
    plots.push(makeChart(lrEl, "learning rate", [["lr", COLORS.lr, "lr"]]));
  }

  const state = { job, rows: new Map(), log: [], progress: job.progress, dirty: false };
  function render() {
    const j = state.job;
    status.replaceChildren(statusBadge(j.status, j.cancel_requested));
    status.dataset.status = j.status;
    const p = state.progress;
    setBar(bar, j.status === "succeeded" ? 1 : p ? p.fraction : 0);
    bar.querySelector(".bar").className = `bar ${j.status}`;
    progressText.textContent = p
      ? `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps}` + (j.status === "running" ? ` · ETA ${duration(p.eta_s)}` : "")
        + (p.loss !== undefined ? ` · loss ${fmt(p.loss, 4)}` : "")
      : j.status === "queued" ? "waiting for a worker" : "";
    const finished = ["succeeded", "failed", "cancelled"].includes(j.status);
    cancel.hidden = finished;
    cancel.disabled = !!j.cancel_requested;
    remove.hidden = !finished;
    modelLink.hidden = !(isTrain && j.status === "succeeded");
    errorBox.hidden = !j.error;
    errorBox.textContent = j.error || "";
    const rows = [...state.rows.values()].sort((a, b) => a.epoch - b.epoch);
    for (const c of plots) chartData(c, rows);
    summary.replaceChildren(summaryTable(j, rows[rows.length - 1]));
    evalBox.replaceChildren(...(j.result && j.result.autoattack_acc ? [evalTable(j.result)] : []));
    const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 30;
    logBox.textContent = state.log.slice(-200).join("\n");
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    state.dirty = false;
  }
  let frame = null;
  const schedule = () => { state.dirty = true; if (!frame) frame = setTimeout(() => { frame = null; render(); }, 100); };

  async function loadArtifacts() {
    const list = await api(`/v1/jobs/${job.id}/artifacts`, { signal });
    artifacts.replaceChildren(...list.items.map((a) => h("li", {},
      h("a", { href: "#", "data-name": a.name, onclick: (e) => { e.preventDefault(); download(a.url, a.name).catch(showError); } }, a.name),
      h("span", { class: "muted small" }, ` ${(a.size / 1024).toFixed(1)} KiB`))));
    if (!list.items.length) artifacts.append(h("li", { class: "muted" }, "none yet"));
  }

  cancel.addEventListener("click", async () => {
    try { state.job = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }); schedule(); } catch (err) { showError(err); }
  });
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${job.id} and its files?`)) return;
    try { await api(`/v1/jobs/${job.id}`, { method: "DELETE" }); location.hash = "#/jobs"; } catch (err) { showError(err); }
  });

  render();
  loadArtifacts().catch(showError);
  await followEvents(`/v1/jobs/${job.id}/events`, (kind, data) => {
    if (kind === "metrics") state.rows.set(data.epoch, data);
    else if (kind === "progress") state.progress = data;
    else if (kind === "log") state.log.push(data.line);
    else if (kind === "state") {
      state.job = { ...state.job, status: data.status, cancel_requested: data.cancel_requested ?? state.job.cancel_requested };
      if (data.error) state.job.error = data.error;
      // the event holds the new status only; the record adds start/finish times, result and error
      api(`/v1/jobs/${job.id}`, { signal }).then((j) => { state.job = j; schedule(); }).catch(() => {});
    }
    schedule();
  }, signal, () => ["succeeded", "failed", "cancelled"].includes(state.job.status));
  if (signal.aborted) return;
  // The stream has ended: the job is finished. Read its final record (result, error) and files.
  state.job = await api(`/v1/jobs/${job.id}`, { signal });
  render();
  await loadArtifacts();
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
async function modelPage(view, id, signal) {
  const model = await api(`/v1/models/${encodeURIComponent(id)}`, { signal });
  const isImage = model.spec.dataset !== "square_wave";
  const attack = h("input", { type: "checkbox", id: "attack", checked: true });
  const results = h("tbody", { id: "certify-results" });
  const barHead = h("th", {}, "distance to the boundary");
  const busy = h("span", { class: "muted small", id: "certify-busy" });
  const legend = h("p", { class: "muted small" },
    "Radii are l2 distances in [0, 1] pixel space, shown in units of 1/255. ",
    h("span", { class: "swatch certified" }), " certified: no perturbation this small changes the class (from the Lipschitz bound). ",
    h("span", { class: "swatch gap" }), " the true distance to the decision boundary lies in [certified, attacked]; ",
    "the attacked radius is the smallest adversarial perturbation found.");

  view.append(
    h("div", { class: "title-row" }, h("h1", { class: "mono" }, model.id), h("a", { href: `#/jobs/${model.id}` }, "training job")),
    h("p", { class: "muted" }, `${specLabel(model.spec)} · clean accuracy ${pct(model.clean_acc)}`
      + Object.entries(model.certified_acc).map(([r, v]) => ` · certified at ${r}/255 ${pct(v)}`).join("")),
  );

  let inputArea;
  if (isImage) {
    const size = model.spec.img_size;
    const fileInput = h("input", { type: "file", id: "certify-files", multiple: true, accept: "image/png,image/jpeg,.npy" });
    const drop = h("div", { class: "dropzone", id: "dropzone" },
      h("p", {}, `Drop ${size}×${size} PNG or JPEG images here (they are not resized), or `),
      h("label", { class: "button" }, "choose files", fileInput));
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      certifyFiles([...e.dataTransfer.files]);
    });
    fileInput.addEventListener("change", () => { certifyFiles([...fileInput.files]); fileInput.value = ""; });
    inputArea = drop;
  } else {
    const values = h("input", { id: "toy-inputs", value: "0.3, -1.2, 1.5", size: 30 });
    const go = h("button", { type: "button", id: "toy-certify" }, "Certify");
    go.addEventListener("click", () => {
      const xs = values.value.split(/[\s,;]+/).filter(Boolean).map(Number);
      if (!xs.length || xs.some((x) => !Number.isFinite(x))) { showError(new Error("Enter numbers separated by commas, e.g. 0.3, -1.2")); return; }
      certify({ json: { inputs: xs.map((x) => [x]), scale: "model" } }, xs.map((x) => ({ name: `x = ${x}` })));
    });
    inputArea = h("div", { class: "row" }, h("label", {}, "inputs x in [-2, 2]: ", values), go);
  }

  view.append(
    inputArea,
    h("div", { class: "row" }, h("label", { class: "check" }, attack, h("span", {}, "also attack (upper bound on the distance; slower)")), busy),
    legend,
    h("table", { class: "jobs certify", id: "certify-table" },
      h("thead", {}, h("tr", {}, ["input", "", "class", "margin", "certified", "attacked"]
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
function certRow(r, input, scale, unit, attacked) {
  const cert = r.radius_pixel * scale;
  const att = r.attack_radius_pixel === null || r.attack_radius_pixel === undefined ? null : r.attack_radius_pixel * scale;
  const barEl = h("div", { class: "interval", "data-cert": cert, "data-att": att ?? "",
    title: att === null ? `certified ${fmt(cert)}${unit}; no attack` : `true distance in [${fmt(cert)}, ${fmt(att)}]${unit}` },
  h("div", { class: "certified" }), att !== null ? h("div", { class: "gap" }) : null);
  return h("tr", { class: "cert-row" },
    h("td", { class: "mono small" }, input.name),
    h("td", {}, input.thumb ? h("img", { src: input.thumb, class: "thumb", alt: "" }) : null),
    h("td", { class: "class" }, r.predicted < 0 ? "not finite" : (r.class_name ? `${r.class_name} (${r.predicted})` : String(r.predicted))),
    h("td", {}, fmt(r.margin, 4)),
    h("td", { class: "radius", title: `model-input space (after normalisation): ${fmt(r.radius, 4)}` }, `${fmt(cert, 2)}${unit}`),
    h("td", { class: "attack" }, att === null ? (attacked ? "none found" : "not run") : `${fmt(att, 2)}${unit}`),
    h("td", { class: "bar-cell" }, barEl),
  );
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => { setupKeyDialog(); route(); });
