// One job: status, progress and ETA, live loss / metric curves (from "metrics" events fetched with `after`),
// events, checkpoints, hyper-parameters, and the cancel / pause / resume / merge / download buttons.

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { renderPlayground } from "./playground.js";
import { TERMINAL, badge, bytes, duration, el, num, progressBar, shownStatus, when } from "./util.js";

const POLL_MS = 2000;
const LOSS = /loss$/;
const MERGING = new Set(["queued", "running"]);
const METRIC = /(accuracy|f1|pearson|spearman|matthews|mcc|precision|recall|exact)/;

/** Which chart a metrics key belongs to: "loss", "metric" or null (step, lr, tokens... are not plotted). */
export function chartOf(key) {
  if (LOSS.test(key)) return "loss";
  return METRIC.test(key) ? "metric" : null;
}

/** Save a Blob under `name` through a temporary object URL. */
function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function hyperparameters(job) {
  const method = job.method || {};
  const specific = (method[method.type] && method[method.type].hyperparameters) || {};
  return { method: method.type, ...(job.hyperparameters || {}), ...specific, seed: job.seed };
}

export function renderJob(root, jobId, notify) {
  const head = el("div", { class: "job-head" });
  const actions = el("div", { class: "actions" });
  const progress = el("div", { class: "job-progress" });
  const errorBox = el("div", { id: "job-error", class: "alert error", hidden: true });
  const lossCanvas = el("canvas", { id: "loss-chart", class: "chart", dataset: { testid: "loss-chart" } });
  const metricCanvas = el("canvas", { id: "metric-chart", class: "chart", dataset: { testid: "metric-chart" } });
  const results = el("ul", { id: "results", class: "files" });
  const events = el("ol", { id: "events", class: "events", dataset: { testid: "events-list" } });
  const showMetrics = el("input", { type: "checkbox", id: "show-metric-events" });
  const checkpoints = el("tbody", { id: "checkpoints-body" });
  const hps = el("dl", { id: "hyperparameters", class: "kv" });
  const playground = el("section", { id: "playground", class: "card", hidden: true, dataset: { testid: "playground" } });
  let playgroundShown = false;
  // data-live turns "false" once the job is finished and all its events are drawn.
  const view = el("section", { id: "job-view", class: "stack", dataset: { jobId, live: "true" } },
      el("a", { href: "#/jobs", class: "back" }, "← All jobs"),
      el("div", { class: "card" }, head, progress, actions, errorBox),
      playground,
      el("div", { class: "grid2" },
        el("section", { class: "card" }, el("h3", {}, "Loss"), lossCanvas),
        el("section", { class: "card" }, el("h3", {}, "Validation metric"), metricCanvas)),
      el("div", { class: "grid2" },
        el("section", { class: "card" },
          el("div", { class: "card-head" }, el("h3", {}, "Events"),
            el("label", { class: "small muted" }, showMetrics, " metric events")),
          events),
        el("div", { class: "stack" },
          el("section", { class: "card" }, el("h3", {}, "Results"), results),
          el("section", { class: "card" }, el("h3", {}, "Checkpoints"),
            el("div", { class: "table-wrap" }, el("table", { id: "checkpoints" },
              el("thead", {}, el("tr", {}, el("th", {}, "Step"), el("th", {}, "Train loss"),
                el("th", {}, "Valid loss"), el("th", {}, "Created"))), checkpoints))),
          el("section", { class: "card" }, el("h3", {}, "Hyper-parameters"), hps))));
  root.replaceChildren(view);
  events.classList.toggle("hide-metrics", true);
  showMetrics.addEventListener("change", () => events.classList.toggle("hide-metrics", !showMetrics.checked));

  // Per-batch train loss is spiky: drawn as an EMA with alpha 0.1 (each new batch weighs 0.1), raw faint behind.
  const charts = { loss: new LineChart(lossCanvas, { smooth: { alpha: 0.1, match: /^train/ } }), metric: new LineChart(metricCanvas, { empty: "Appears with validation" }) };
  const seen = new Set();
  let after = null;
  let job = null;
  let stopped = false;
  let timer = null;
  let checkpointKey = null; // checkpoints and loss points last drawn
  let resultsKey = null; // result file ids last drawn (null: nothing drawn yet)

  async function act(action, button) {
    button.disabled = true;
    try {
      job = await api.action(jobId, action);
      notify(`Job ${action} requested: ${shownStatus(job).replace("_", " ")}`, "ok");
      drawJob();
      if (view.dataset.live === "false") { view.dataset.live = "true"; timer = setTimeout(poll, POLL_MS); } // a merge
    } catch (err) {
      notify(err.message, "error");
      button.disabled = false;
    }
  }

  async function download(fileId, button) {
    button.disabled = true;
    try {
      const meta = await api.file(fileId);
      saveBlob(await api.content(fileId), meta.filename || fileId);
    } catch (err) {
      notify(err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  /** Merge button (its label follows merge_status) or, once merged, a link to the merged file. */
  function mergeControl(button) {
    const m = job.merge_status;
    if (m === "succeeded") {
      const files = job.result_files || [];
      const link = el("a", { href: "#", dataset: { testid: "merged-download", fileId: files[files.length - 1] } },
        "Download merged model");
      link.addEventListener("click", (e) => { e.preventDefault(); download(files[files.length - 1], link); });
      return link;
    }
    const label = { queued: "Merge queued…", running: "Merging…", failed: "Merge failed: retry" }[m] || "Merge";
    return button("merge", label, !MERGING.has(m));
  }

  function drawJob() {
    const p = job.progress || {};
    head.replaceChildren(
      el("h2", { class: "mono" }, job.id), badge(shownStatus(job)),
      el("div", { class: "muted small" }, `${job.model} · ${(job.method || {}).type || ""} · created ${when(job.created_at)}`,
        job.fine_tuned_model ? ` · ${job.fine_tuned_model}` : ""));
    const facts = [
      job.status === "running" ? el("span", { dataset: { testid: "job-eta" } }, `ETA ${duration(p.seconds_remaining)}`) : null,
      p.epoch ? `epoch ${num(p.epoch)}` : null,
      job.trained_tokens ? `${job.trained_tokens.toLocaleString()} tokens` : null,
      job.finished_at ? `finished ${when(job.finished_at)}` : null,
    ].filter(Boolean).flatMap((f, i) => (i ? [" · ", f] : [f]));
    progress.replaceChildren(progressBar(job), el("div", { class: "muted small" }, ...facts));
    const s = job.status;
    const button = (name, label, enabled, cls = "") => {
      const b = el("button", { type: "button", class: cls, dataset: { testid: `${name}-button` }, disabled: !enabled }, label);
      b.addEventListener("click", () => act(name, b));
      return b;
    };
    actions.replaceChildren(
      button("cancel", "Cancel", !TERMINAL.has(s), "danger"),
      button("pause", "Pause", (s === "running" && !job.stop_requested) || s === "queued"),
      button("resume", "Resume", s === "paused"),
      s === "succeeded" ? mergeControl(button) : null);
    if (s === "succeeded" && job.fine_tuned_model && !playgroundShown) {
      playgroundShown = true;
      renderPlayground(playground, job).catch((e) => notify(e.message, "error"));
    }
    const err = job.error;
    errorBox.hidden = !(err && (err.message || err.code));
    if (!errorBox.hidden) errorBox.textContent = `${err.code || "error"}: ${err.message || ""}`;
    const files = job.result_files || [];
    if (`${s}:${files.join()}` !== resultsKey) {
      resultsKey = `${s}:${files.join()}`;
      results.replaceChildren(...(files.length ? files.map((id, i) => {
        const b = el("button", { type: "button", class: i === 0 ? "primary" : "", dataset: { testid: "download-button", fileId: id } }, "Download");
        b.addEventListener("click", () => download(id, b));
        const name = el("span", { class: "mono small" }, id);
        api.file(id).then((f) => { name.textContent = `${f.filename} (${bytes(f.bytes)})`; }).catch(() => {});
        return el("li", {}, name, b);
      }) : [el("li", { class: "muted" }, s === "succeeded" ? "No result files." : "Results appear when the job succeeds.")]));
    }
    hps.replaceChildren(...Object.entries(hyperparameters(job)).flatMap(([k, v]) =>
      [el("dt", {}, k), el("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]));
  }

  function addEvents(list) {
    let drawn = false;
    for (const ev of list) {
      if (seen.has(ev.id)) continue;
      seen.add(ev.id);
      after = ev.id;
      const isMetrics = ev.type === "metrics";
      if (isMetrics && ev.data) {
        const step = ev.data.step;
        for (const [k, v] of Object.entries(ev.data)) {
          const which = chartOf(k);
          if (which && typeof v === "number") { charts[which].add(k, step, v); drawn = true; }
        }
      }
      const text = isMetrics && ev.data
        ? Object.entries(ev.data).map(([k, v]) => `${k}=${num(v)}`).join("  ") : ev.message;
      events.prepend(el("li", { class: `level-${ev.level || "info"}${isMetrics ? " metrics" : ""}`, dataset: { type: ev.type } },
        el("time", {}, when(ev.created_at)), el("span", {}, text)));
    }
    while (events.children.length > 500) events.lastChild.remove();
    if (drawn) { charts.loss.draw(); charts.metric.draw(); }
  }

  // A checkpoint's metrics are its last evaluation (valid_*): its train loss is the metrics event's nearest its step.
  function trainLoss(c) {
    const train = charts.loss.series.get("train_loss");
    const own = (c.metrics || {}).train_loss;
    return own ?? (train ? LineChart.nearest(train.points, c.step_number)[1] : undefined);
  }

  async function refreshCheckpoints() {
    const page = await api.checkpoints(jobId);
    const key = `${page.data.length}:${charts.loss.pointCount}`;
    if (key === checkpointKey) return;
    checkpointKey = key;
    checkpoints.replaceChildren(...(page.data.length ? page.data.map((c) => el("tr", {},
      el("td", {}, c.step_number), el("td", {}, num(trainLoss(c))),
      el("td", {}, num((c.metrics || {}).valid_loss)), el("td", { class: "muted" }, when(c.created_at))))
      : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "None yet."))]));
  }

  async function poll() {
    if (document.hidden) { timer = setTimeout(poll, POLL_MS); return; } // background tab: wait
    try {
      job = await api.job(jobId);
      if (stopped) return;
      drawJob();
      let page;
      do {
        page = await api.events(jobId, after);
        if (stopped) return;
        addEvents(page.data);
      } while (page.has_more && page.data.length);
      await refreshCheckpoints();
    } catch (err) {
      if (stopped) return;
      if (err.status === 404) { root.replaceChildren(el("div", { class: "empty" }, `Job ${jobId} not found.`)); return; }
      notify(err.message, "error");
    }
    if (stopped) return;
    // A finished job changes no more; one last pass above picked up its final events.
    if (job && TERMINAL.has(job.status) && !MERGING.has(job.merge_status)) { view.dataset.live = "false"; return; }
    timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => { stopped = true; clearTimeout(timer); charts.loss.disconnect(); charts.metric.disconnect(); };
}
