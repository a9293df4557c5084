// #/paper (the paper's presets) and #/paper/NAME: how to run a preset with the CLI (the command,
// built from the same options as `lbdn paper run`), the paper's published numbers, and the report of
// a sweep of it. `lbdn paper report` writes its plots on the client's disk, so the API has no plots
// to serve: this page renders the report's table from the sweep's data, with its budget (epochs and
// seeds beside the paper's) and runs that collapsed or diverged flagged, never compared.
"use strict";

// ---- #/paper -------------------------------------------------------------------------------------
async function paperListPage(view, signal) {
  const { items } = await api("/v1/paper/presets", { signal });
  view.append(h("h1", { class: "page-title" }, "The paper's experiments"),
    h("table", { class: "jobs", id: "presets-table" },
      h("thead", {}, h("tr", {}, ["preset", "what", "jobs", "evaluated"].map((t) => h("th", {}, t)))),
      h("tbody", {}, items.map((p) => h("tr", { "data-preset": p.name },
        h("td", {}, h("a", { href: `#/paper/${p.name}`, class: "mono" }, p.name)), h("td", {}, p.title),
        h("td", {}, String(p.jobs)), h("td", {}, p.evaluate ? "AutoAttack" : "–"))))));
}

// ---- #/paper/NAME: the command ---------------------------------------------------------------------
// The paper's budget of a preset: its epochs and its seeds (a seed grid, or the one seed of the spec).
function paperBudget(preset) {
  const epochs = Math.max(...preset.lines.map((l) => l.spec.epochs || 0));
  const seeds = Math.max(...preset.lines.map((l) => (l.grid.seed || [l.spec.seed ?? 123]).length));
  return { epochs, seeds };
}
function commandForm(preset) {
  const num = (id, value, attrs = {}) => h("input", { id, type: "number", min: "1", value, ...attrs });
  const f = {
    epochs: num("paper-epochs", "", { placeholder: `${paperBudget(preset).epochs} (the paper's)` }),
    seeds: h("input", { id: "paper-seeds", placeholder: "123 43 13" }),
    only: h("input", { id: "paper-only", placeholder: "layer=Sandwich,SLL gamma=1" }),
    noEval: h("input", { id: "paper-no-eval", type: "checkbox" }),
    follow: h("input", { id: "paper-follow", type: "checkbox", checked: true }),
    command: h("pre", { class: "preview", id: "paper-command" }),
  };
  const update = () => { f.command.textContent = paperCommand(preset.name, f); };
  const form = h("form", { class: "grid-form", id: "paper-form" },
    h("label", {}, h("span", {}, "--epochs"), f.epochs, h("small", { class: "muted" }, "a short budget instead of the paper's")),
    h("label", {}, h("span", {}, "--seeds"), f.seeds),
    h("label", {}, h("span", {}, "--only"), f.only, h("small", { class: "muted" }, "FIELD=V1,V2 ...: a part of the grid")),
    preset.evaluate ? h("label", { class: "check" }, f.noEval, h("span", {}, "--no-eval: train only (no AutoAttack evaluations)")) : null,
    h("label", { class: "check" }, f.follow, h("span", {}, "--follow: wait until every job has finished")));
  form.addEventListener("input", update);
  form.addEventListener("submit", (e) => e.preventDefault());
  update();
  return h("div", { class: "two-col" }, form, h("div", {}, f.command));
}
function paperCommand(name, f) {
  const words = (s) => s.trim().split(/[\s,]+/).filter(Boolean);
  const args = [`lbdn paper run ${name}`];
  if (f.epochs.value) args.push(`--epochs ${f.epochs.value}`);
  if (words(f.seeds.value).length) args.push(`--seeds ${words(f.seeds.value).join(" ")}`);
  if (f.only.value.trim()) args.push(`--only ${f.only.value.trim()}`);
  if (f.noEval.checked) args.push("--no-eval");
  if (f.follow.checked) args.push("--follow");
  return `${args.join(" ")}\n\n# then the table and plots (report.md, PNGs):\nlbdn paper report ${name}`;
}

// ---- #/paper/NAME: the report --------------------------------------------------------------------
// A sweep's budget beside the paper's: "2 of the paper's 200 epochs · 1 of the paper's 1 seeds".
function budgetLine(preset, runs) {
  const paper = paperBudget(preset);
  const epochs = [...new Set(runs.map((r) => r.spec.epochs))].sort((a, b) => a - b);
  const seeds = new Set(runs.map((r) => r.spec.seed)).size;
  const short = epochs.some((e) => e < paper.epochs) || seeds < paper.seeds;
  return h("p", { id: "paper-budget", class: short ? "budget short" : "budget" },
    `Budget: ${epochs.join("/")} of the paper's ${paper.epochs} epochs · ${seeds} of the paper's ${paper.seeds} seeds · `
    + `${runs.length} of ${preset.jobs} runs`, short ? " (a shorter budget: expect lower numbers than the paper's)" : "");
}
// One cell: our mean over the good runs (paper's number in brackets), or the flag when every run
// at this point collapsed or diverged.
function reportCell(recs, metric, scale, paper) {
  const good = recs.filter((r) => !r.flag && typeof r.metrics[metric] === "number");
  const flags = [...new Set(recs.map((r) => r.flag).filter(Boolean))];
  const ours = good.length ? mean(good.map((r) => scale * r.metrics[metric])) : null;
  const td = h("td", { "data-value": ours, "data-paper": paper ?? null },
    ours === null ? (flags.length ? "" : "–") : fmt(ours, 2), paper !== undefined && paper !== null ? h("span", { class: "muted" }, ` (${paper})`) : null,
    flags.map((f) => h("span", { class: "flag" }, f)));
  return td;
}
// Table 1: tightness (%) by layer x gamma, ours (paper).
function table1Report(preset, runs) {
  const paper = (preset.published || {}).tightness || {};
  const gammas = [...new Set(runs.map((r) => r.spec.gamma).concat(Object.values(paper).flatMap((row) => Object.keys(row).map(Number))))]
    .filter((g) => g !== null && g !== undefined).sort((a, b) => a - b);
  const layers = [...new Set(runs.map((r) => r.spec.layer).concat(Object.keys(paper)))];
  return h("table", { class: "jobs", id: "paper-report" },
    h("caption", { class: "muted small" }, "Lipschitz tightness in % (empirical lower bound / gamma): ours (paper)"),
    h("thead", {}, h("tr", {}, h("th", {}, "layer"), gammas.map((g) => h("th", {}, `gamma ${g}`)))),
    h("tbody", {}, layers.map((layer) => h("tr", { "data-layer": layer }, h("th", {}, layer), gammas.map((g) => {
      const recs = runs.filter((r) => r.spec.layer === layer && Number(r.spec.gamma) === g);
      return recs.length ? reportCell(recs, "tightness", 100, paper[layer]?.[String(g)]) : h("td", { class: "muted" }, "– ", paper[layer]?.[String(g)] !== undefined ? `(${paper[layer][String(g)]})` : "");
    })))));
}
// Other presets: per point (the runs' differing fields but the seed), the mean of the accuracies.
function genericReport(runs) {
  const fields = differingFields(runs.map((r) => r.spec)).filter((k) => k !== "seed");
  const metrics = ["test_acc", "cert_acc_36", "eval_clean_acc", "eval_aa_36", "eval_aa_72", "eval_aa_108"]
    .filter((m) => runs.some((r) => typeof r.metrics[m] === "number"));
  const groups = new Map();
  for (const r of runs) {
    const key = fields.map((k) => show(r.spec[k])).join(" · ");
    groups.set(key, [...(groups.get(key) || []), r]);
  }
  return h("table", { class: "jobs", id: "paper-report" },
    h("caption", { class: "muted small" }, "accuracy in %, mean over seeds (flagged runs left out)"),
    h("thead", {}, h("tr", {}, h("th", {}, fields.join(" · ") || "runs"), h("th", {}, "runs"), metrics.map((m) => h("th", {}, m)))),
    h("tbody", {}, [...groups].map(([key, recs]) => h("tr", {}, h("th", {}, key || "all"), h("td", {}, String(recs.length)),
      metrics.map((m) => reportCell(recs, m, 1, undefined))))));
}
function paperReport(preset, sw) {
  const runs = sweepRuns(sw).filter((r) => r.status === "succeeded").map((r) => ({ ...r, flag: runFlag(r.spec, r.result) }));
  const flagged = runs.filter((r) => r.flag);
  return [
    budgetLine(preset, runs),
    h("p", { class: "small" }, h("a", { href: `#/sweeps/${sw.id}` }, sw.id), ` · ${countsText(sw.counts)}`,
      flagged.length ? h("span", { class: "flag" }, `${flagged.length} run(s) collapsed or diverged: left out of the means`) : null),
    preset.kind === "table1" ? table1Report(preset, runs) : genericReport(runs),
  ];
}

async function paperPage(view, name, signal) {
  const preset = await api(`/v1/paper/presets/${encodeURIComponent(name)}`, { signal });
  const sweeps = (await api(`/v1/sweeps?preset=${encodeURIComponent(name)}&limit=50`, { signal })).items;
  const pick = h("select", { id: "paper-sweep" }, sweeps.map((s) => h("option", { value: s.id }, `${s.id} · ${s.status} · ${when(s.created_at)}`)));
  const report = h("div", { id: "paper-report-box" });
  view.append(
    h("h1", { class: "page-title" }, preset.title),
    preset.note ? h("p", { class: "muted" }, preset.note) : null,
    h("h3", {}, "Run it"), commandForm(preset),
    h("h3", {}, `The paper's jobs (${preset.jobs})`),
    h("table", { class: "jobs", id: "paper-lines" },
      h("thead", {}, h("tr", {}, ["spec", "grid"].map((t) => h("th", {}, t)))),
      h("tbody", {}, preset.lines.map((l) => h("tr", {}, h("td", { class: "mono small" }, Object.entries(l.spec).map(([k, v]) => `${k}=${v}`).join(" ")),
        h("td", { class: "mono small" }, Object.entries(l.grid).map(([k, v]) => `${k}: ${v.join(", ")}`).join(" · ")))))),
    h("h3", {}, "Report"),
    sweeps.length ? h("label", {}, "sweep ", pick) : h("p", { class: "muted" }, "No sweep of this preset yet: run the command above."),
    report);
  const load = async () => {
    if (!pick.value) {  // no run yet: the paper's own numbers
      if (preset.kind === "table1") report.replaceChildren(table1Report(preset, []));
      return;
    }
    const sw = await api(`/v1/sweeps/${pick.value}`, { signal });
    report.replaceChildren(...paperReport(preset, sw));
  };
  pick.addEventListener("change", () => load().catch(showError));
  await load();
}
