// Small DOM and formatting helpers shared by the views (no framework, no build step).

/** Create an element: el("div", {class: "x", dataset: {testid: "y"}, onclick: fn}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** "3m05s", "1h02m", "42s"; "—" when unknown. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Unix seconds -> "14:03:12" today, else "Nov 3, 14:03". */
export function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** A number for display: 4 significant digits, integers as they are. */
export function num(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return v === undefined || v === null ? "—" : String(v);
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

/** Bytes as "12.3 kB". */
export function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/** Fraction done of a job (0..1), from its progress block. */
export function fraction(job) {
  if (job.status === "succeeded") return 1;
  const p = job.progress || {};
  return p.total_steps ? Math.min(1, (p.step || 0) / p.total_steps) : 0;
}

/** The status to show: "cancelling" / "pausing" while a running job has that request pending (the API's
 * `stop_requested`; its `status` stays "running" until the job stops at its next step). */
export function shownStatus(job) {
  if (job.status === "running" && job.stop_requested) return job.stop_requested === "cancel" ? "cancelling" : "pausing";
  return job.status;
}

/** A status pill. */
export function badge(status) {
  return el("span", { class: `badge status-${status}`, dataset: { testid: "job-status" } }, status.replace("_", " "));
}

/** A progress bar with its label ("42/100"). */
export function progressBar(job) {
  const f = fraction(job);
  const p = job.progress || {};
  const label = p.total_steps ? `${p.step || 0}/${p.total_steps}` : job.status === "succeeded" ? "done" : "—";
  return el("div", { class: "progress", dataset: { testid: "job-progress", fraction: f.toFixed(3) } },
    el("div", { class: "progress-track", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": Math.round(f * 100) },
      el("div", { class: "progress-fill", style: `width:${(f * 100).toFixed(1)}%` })),
    el("span", { class: "progress-label" }, label));
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
