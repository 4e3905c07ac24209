// The jobs table: polls the list every 2 s while shown; status, progress bar and ETA per job.

import { api } from "./api.js";
import { badge, duration, el, progressBar, shownStatus, when } from "./util.js";

const POLL_MS = 2000;

function row(job) {
  const method = (job.method && job.method.type) || "—";
  const eta = job.status === "running" ? duration((job.progress || {}).seconds_remaining) : "";
  const href = `#/jobs/${job.id}`;
  return el("tr", { dataset: { testid: "job-row", jobId: job.id, status: job.status } },
    el("td", {}, el("a", { href, class: "mono", title: job.id, dataset: { testid: "job-link" } }, job.id),
      job.suffix ? el("div", { class: "muted small" }, job.suffix) : null),
    el("td", {}, badge(shownStatus(job))),
    el("td", { class: "col-progress" }, progressBar(job)),
    el("td", { dataset: { testid: "job-eta" } }, eta),
    el("td", {}, job.model),
    el("td", {}, method),
    el("td", { class: "muted" }, when(job.created_at)));
}

/** Render the jobs view into `root`; returns a function that stops its polling. */
export function renderJobs(root, notify) {
  const tbody = el("tbody", { id: "jobs-body" });
  const empty = el("div", { id: "jobs-empty", class: "empty", hidden: true },
    "No jobs yet. ", el("a", { href: "#/new" }, "Create your first fine-tuning job"), ".");
  const updated = el("span", { class: "muted small", id: "jobs-updated" });
  root.replaceChildren(
    el("section", { class: "card" },
      el("div", { class: "card-head" }, el("h2", {}, "Fine-tuning jobs"), updated,
        el("a", { href: "#/new", class: "button primary", dataset: { testid: "new-job-link" } }, "New job")),
      el("div", { class: "table-wrap" },
        el("table", { id: "jobs-table", dataset: { testid: "jobs-table" } },
          el("thead", {}, el("tr", {}, ...["Job", "Status", "Progress", "ETA", "Model", "Method", "Created"]
            .map((h) => el("th", {}, h)))),
          tbody)),
      empty));

  let timer = null;
  let stopped = false;
  async function poll() {
    // A background tab keeps its place but stops asking the server.
    if (document.hidden) { timer = setTimeout(poll, POLL_MS); return; }
    try {
      const page = await api.jobs({ limit: 50 });
      if (stopped) return;
      tbody.replaceChildren(...page.data.map(row));
      empty.hidden = page.data.length > 0;
      updated.textContent = `updated ${when(Date.now() / 1000)}`;
    } catch (err) {
      if (!stopped) notify(err.message, "error");
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => { stopped = true; clearTimeout(timer); };
}
