// The dashboard's shared pieces: the server's catalog, DOM and number helpers, problem+json errors,
// the API key and fetch() calls with it, Server-Sent Events read over fetch, downloads, and the
// status badge / progress bar of the job pages. Loaded first (index.html); the pages use them.
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

// ---- a job's status badge and progress bar -----------------------------------------------------
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

// ---- shared by the compare, sweeps and paper pages ---------------------------------------------
// One colour per run on overlaid curves (matplotlib's tab10, so a run keeps its colour in every chart).
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const FINISHED_STATES = ["succeeded", "failed", "cancelled", "deleted"];
// A run's final numbers: the training summary (or evaluation result) when it has finished, else
// its latest epoch; `verified_bound` is the float64 Lipschitz bound the worker computed from the
// saved weights (gamma itself is a spec field, not a result).
function finalMetrics(result, latest) {
  const r = result || latest || {};
  const out = {};
  for (const [k, v] of Object.entries(r)) {
    if (typeof v === "number" && !["epoch", "gamma"].includes(k)) out[k] = v;
  }
  const b = r.lipschitz_bound;
  if (b && typeof b.verified === "number") out.verified_bound = b.verified;
  return out;
}
// The rules of `lbdn paper report` (client/results.py flag: CONSTANT_TIGHTNESS, CHANCE_FACTOR), so
// the dashboard and the CLI flag the same runs. Test accuracy (%) of guessing, per dataset.
const CHANCE_ACC = { cifar10: 10, cifar100: 1, tiny_imagenet: 0.5, mnist: 10 };
const CONSTANT_TIGHTNESS = 1e-4;
const CHANCE_FACTOR = 1.2;
// Why a finished run's numbers must not be read beside the paper's: null when they can be.
function runFlag(spec, result) {
  if (!result) return null;
  // JSON has no NaN: a diverged loss arrives as null (test_acc is null for a regression, by design)
  if ("test_loss" in result && !Number.isFinite(result.test_loss)) return "diverged (NaN)";
  if (typeof result.tightness === "number" && Math.abs(result.tightness) < CONSTANT_TIGHTNESS) return "collapsed (constant output)";
  const chance = spec && CHANCE_ACC[spec.dataset];
  if (chance && typeof result.test_acc === "number" && result.test_acc <= CHANCE_FACTOR * chance) return "chance accuracy";
  return null;
}
// Spec fields whose values are not the same in every one of `specs`, in the specs' field order.
function differingFields(specs) {
  const keys = [...new Set(specs.flatMap((s) => Object.keys(s || {})))];
  return keys.filter((k) => new Set(specs.map((s) => JSON.stringify((s || {})[k] ?? null))).size > 1);
}
const show = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
// A number for a table cell: the raw value stays in data-value, so tests compare it with the API's.
function numCell(key, v) {
  const text = typeof v !== "number" ? "–" : Number.isInteger(v) ? String(v) : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(3) : fmt(v, 4);
  return h("td", { class: "num", "data-key": key, "data-value": typeof v === "number" ? v : null }, text);
}
// Re-run `refresh` every POLL_MS while the tab is visible, until the page is left or `until()` holds.
async function pollLoop(refresh, signal, until = () => false) {
  while (!signal.aborted) {
    if (!document.hidden) {
      try { await refresh(); clearError(); } catch (err) { showError(err); if (err.status === 401) return; }
      if (until()) return;
    }
    await sleep(POLL_MS, signal);
  }
}
