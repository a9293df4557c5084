// The lbdn dashboard: a small single-page app over the /v1 HTTP API (no build step, no framework).
// Pages (location.hash): #/jobs, #/new, #/jobs/ID, #/models, #/models/ID, #/compare/ID,ID,...
// (or #/compare/sweep/ID), #/sweeps, #/sweeps/ID, #/paper, #/paper/NAME.
//
// Files, loaded in this order by index.html (plain scripts sharing one global scope, no build step):
// core.js (helpers, API calls, event streams), jobs.js (#/jobs, #/new), job.js (#/jobs/ID),
// models.js (#/models, #/models/ID), compare.js (#/compare/...), sweeps.js (#/sweeps, #/sweeps/ID),
// paper.js (#/paper, #/paper/NAME), then this one: the router and the start.
//
// Live data:
// - the job page follows GET /v1/jobs/ID/events (Server-Sent Events). EventSource cannot send an
//   Authorization header, and a key in the URL would end up in logs, so the stream is read with
//   fetch() and parsed in core.js (the format is a few lines of text: `id:`, `event:`, `data:`). It starts
//   at event 0, so one mechanism gives the history and the live tail; after a dropped connection it
//   resumes from the last id it saw.
// - the job list polls GET /v1/jobs every 2 s while the tab is visible: there is no tenant-wide
//   stream, and one stream per listed job would use up the browser's six connections per origin
//   (HTTP/1.1) that the job page's own stream and the API calls need. One small indexed query per
//   2 s is cheap, and the list shows progress, which changes only every few seconds anyway.
"use strict";

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
    : parts[0] === "compare" ? comparePage(view, parts, signal)
    : parts[0] === "sweeps" && parts[1] ? sweepPage(view, parts[1], signal)
    : parts[0] === "sweeps" ? sweepsPage(view, signal)
    : parts[0] === "paper" && parts[1] ? paperPage(view, parts[1], signal)
    : parts[0] === "paper" ? paperListPage(view, signal)
    : Promise.resolve(view.append(h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Jobs"))));
  page.catch(showError);
}

// ---- start ---------------------------------------------------------------------------------------
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => { setupKeyDialog(); route(); });
