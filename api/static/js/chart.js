// A small line chart drawn on <canvas>: several series over a shared x axis (the training step),
// nice ticks, a legend with the latest (or hovered) values, HiDPI-sharp, redrawn on resize.

const PALETTE = ["#3b82f6", "#f59e0b", "#10b981", "#a855f7", "#ef4444", "#14b8a6"];

/** Round tick values covering [lo, hi] with about `count` steps of 1, 2 or 5 x 10^k. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.999) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  // A narrow band can fall between two round values: ask for finer ticks rather than show one label.
  return out.length < 2 && count < 40 ? ticks(lo, hi, count * 2) : out;
}

/** Exponential moving average: s[0] = y[0], s[i] = s[i-1] + alpha * (y[i] - s[i-1]); alpha 1 is no smoothing. */
export function ema(points, alpha) {
  let s = null;
  return points.map(([x, y]) => [x, (s = s === null ? y : s + alpha * (y - s))]);
}

const fmt = (v) => (Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v)) : Number(v.toPrecision(3)).toString());

export class LineChart {
  /** @param {HTMLCanvasElement} canvas */
  /** `smooth`: series drawn as their EMA (weight `alpha` per new point) over the raw curve, faint. */
  constructor(canvas, { empty = "Waiting for metrics…", smooth = null } = {}) {
    this.canvas = canvas;
    this.empty = empty;
    this.smooth = smooth; // e.g. {alpha: 0.1, match: /^train/}
    this.series = new Map(); // name -> {color, points: [[x, y]...]} with x increasing
    this.hoverX = null;
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(canvas);
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => { this.hoverX = null; this.draw(); });
    this.draw();
  }

  /** Append one point; a repeated x (a resumed job re-logging a step) replaces the old value. */
  add(name, x, y) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    if (!this.series.has(name)) this.series.set(name, { color: this.colorFor(name), points: [] });
    const pts = this.series.get(name).points;
    const last = pts[pts.length - 1];
    if (last && last[0] === x) last[1] = y;
    else if (last && last[0] > x) { pts.push([x, y]); pts.sort((a, b) => a[0] - b[0]); }
    else pts.push([x, y]);
  }

  /** Training curves blue, validation orange, whichever arrives first; other series take the next colour. */
  colorFor(name) {
    const fixed = name.startsWith("train") ? PALETTE[0] : name.startsWith("valid") ? PALETTE[1] : null;
    const used = new Set([...this.series.values()].map((s) => s.color));
    if (fixed && !used.has(fixed)) return fixed;
    return PALETTE.find((c) => !used.has(c)) || PALETTE[this.series.size % PALETTE.length];
  }

  get pointCount() {
    let n = 0;
    for (const s of this.series.values()) n += s.points.length;
    return n;
  }

  isSmoothed(name) { return Boolean(this.smooth && this.smooth.match.test(name) && this.series.get(name).points.length > 2); }

  disconnect() { this.observer.disconnect(); }

  layout() {
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    return { w, h, left: 52, right: w - 14, top: 34, bottom: h - 26 };
  }

  bounds() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of this.series.values()) for (const [x, y] of s.points) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    if (x1 <= x0) { x0 -= 1; x1 += 1; }
    const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
    return { x0, x1, y0: y0 - pad, y1: y1 + pad };
  }

  hover(event) {
    if (!this.pointCount) return;
    const { left, right } = this.layout();
    const { x0, x1 } = this.bounds();
    const rect = this.canvas.getBoundingClientRect();
    const fx = (event.clientX - rect.left - left) / (right - left);
    this.hoverX = fx < 0 || fx > 1 ? null : x0 + fx * (x1 - x0);
    this.draw();
  }

  /** Value of a series at the point nearest to x. */
  static nearest(points, x) {
    let best = points[points.length - 1];
    for (const p of points) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
    return best;
  }

  draw() {
    const { canvas } = this;
    const dpr = window.devicePixelRatio || 1;
    const { w, h, left, right, top, bottom } = this.layout();
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    canvas.dataset.points = String(this.pointCount);
    canvas.dataset.series = [...this.series.keys()].join(",");
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const style = getComputedStyle(canvas);
    const ink = style.color || "#333";
    const grid = style.getPropertyValue("--grid").trim() || "rgba(128,128,128,.18)";
    ctx.font = `12px ${style.fontFamily || "system-ui"}`;
    ctx.fillStyle = ink;
    if (!this.pointCount) {
      ctx.globalAlpha = 0.6;
      ctx.textAlign = "center";
      ctx.fillText(this.empty, w / 2, h / 2);
      ctx.globalAlpha = 1;
      return;
    }
    const { x0, x1, y0, y1 } = this.bounds();
    const px = (x) => left + ((x - x0) / (x1 - x0)) * (right - left);
    const py = (y) => bottom - ((y - y0) / (y1 - y0)) * (bottom - top);

    // Grid and tick labels.
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of ticks(y0, y1, Math.max(2, Math.floor((bottom - top) / 40)))) {
      ctx.beginPath(); ctx.moveTo(left, py(t)); ctx.lineTo(right, py(t)); ctx.stroke();
      ctx.fillText(fmt(t), left - 6, py(t));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    // x is the training step: integer ticks only.
    const xt = ticks(x0, x1, Math.max(2, Math.floor((right - left) / 70))).filter((t) => Number.isInteger(t));
    for (const t of xt) ctx.fillText(fmt(t), px(t), bottom + 6);

    // Series; a smoothed one has its raw curve faint behind it.
    const line = (pts) => {
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
      ctx.stroke();
    };
    const smoothed = [];
    for (const [name, { color, points: raw }] of this.series) {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineJoin = "round";
      let points = raw;
      if (this.isSmoothed(name)) {
        smoothed.push(name);
        ctx.globalAlpha = 0.25; ctx.lineWidth = 1; line(raw); ctx.globalAlpha = 1;
        points = ema(raw, this.smooth.alpha);
      }
      ctx.lineWidth = 2;
      line(points);
      const dots = points.length <= 30 ? points : [points[points.length - 1]];
      for (const [x, y] of dots) { ctx.beginPath(); ctx.arc(px(x), py(y), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    }

    canvas.dataset.smoothed = smoothed.join(",");

    // Hover line.
    if (this.hoverX !== null) {
      ctx.strokeStyle = ink; ctx.globalAlpha = 0.35;
      ctx.beginPath(); ctx.moveTo(px(this.hoverX), top); ctx.lineTo(px(this.hoverX), bottom); ctx.stroke();
      ctx.globalAlpha = 1;
    }

    // Legend: name and the latest (or hovered) value.
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let lx = left;
    for (const [name, { color, points: raw }] of this.series) {
      const points = this.isSmoothed(name) ? ema(raw, this.smooth.alpha) : raw;
      const [sx, sy] = this.hoverX === null ? points[points.length - 1] : LineChart.nearest(points, this.hoverX);
      const label = `${name} ${fmt(sy)}${this.hoverX === null ? "" : ` @${fmt(sx)}`}`;
      ctx.fillStyle = color; ctx.fillRect(lx, 11, 10, 10);
      ctx.fillStyle = ink; ctx.fillText(label, lx + 14, 16);
      lx += ctx.measureText(label).width + 30;
    }
  }
}
