// Line charts on uPlot (web/vendor/uPlot.iife.min.js, loaded by index.html
// as the global uPlot). A chart is rebuilt when its shape changes (series,
// log scale, x mode) and only fed new data otherwise, so polling is cheap.
import { alignSeries, positiveOnly, fmtDuration, fmtNum, fmtTicks } from './logic.js';

export const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777', '#4b5563', '#65a30d'];

// Same hue, faded: the raw curve under its smoothed one, as TensorBoard draws it.
export function faded(color, alpha = 0.25) {
  const n = parseInt(color.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

export class LineChart {
  // opts: {title, height, xMode: 'step'|'wall', log: bool, syncKey}
  constructor(el, opts) {
    this.el = el;
    this.opts = { height: 220, xMode: 'step', log: false, ...opts };
    this.plot = null;
    this.sig = '';
    this.series = [];
    this.onResize = () => this.resize();
    window.addEventListener('resize', this.onResize);
  }

  setOptions(o) {
    Object.assign(this.opts, o);
    this.render();
  }

  // series: [{label, x: [], y: [], color, width, raw: bool}]
  set(series) {
    this.series = series;
    this.render();
  }

  render() {
    const { series } = this;
    const counts = {};
    for (const s of series) counts[s.label] = s.y.filter((v) => v !== null && Number.isFinite(v)).length;
    this.el.dataset.points = JSON.stringify(counts);
    this.el.dataset.series = String(series.filter((s) => !s.raw && counts[s.label] > 0).length);
    const data = alignSeries(series.map((s) => ({ x: s.x, y: this.opts.log ? positiveOnly(s.y) : s.y })));
    const sig = JSON.stringify([series.map((s) => [s.label, s.color, !!s.raw]), this.opts.log, this.opts.xMode]);
    if (this.plot && sig === this.sig) {
      this.plot.setData(data);
      return;
    }
    this.destroyPlot();
    this.sig = sig;
    this.plot = new window.uPlot(this.config(series), data, this.el);
    this.plot.root.querySelectorAll('.u-legend .u-series').forEach((row, i) => {
      if (i > 0 && series[i - 1] && series[i - 1].raw) row.classList.add('raw');
    });
  }

  config(series) {
    const wall = this.opts.xMode === 'wall';
    const width = Math.max(260, this.el.clientWidth || 600);
    return {
      title: this.opts.title,
      width,
      height: this.opts.height,
      cursor: this.opts.syncKey ? { sync: { key: this.opts.syncKey } } : {},
      scales: { x: { time: false }, y: this.opts.log ? { distr: 3 } : {} },
      axes: [
        { values: (u, splits) => (wall ? splits.map(fmtDuration) : fmtTicks(splits)), label: wall ? 'wall time' : 'step', labelSize: 20, size: 36 },
        { values: (u, splits) => fmtTicks(splits), size: 64 },
      ],
      series: [
        { label: wall ? 'time' : 'step', value: (u, v) => (v === null || v === undefined ? '–' : wall ? fmtDuration(v) : fmtNum(v, 8)) },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.raw ? faded(s.color) : s.color,
          width: s.width || (s.raw ? 1 : 2),
          spanGaps: true,
          points: { show: s.points ?? false },
          value: (u, v) => fmtNum(v, 5),
        })),
      ],
    };
  }

  resize() {
    if (!this.plot) return;
    const w = Math.max(260, this.el.clientWidth || 600);
    if (w !== this.plot.width) this.plot.setSize({ width: w, height: this.opts.height });
  }

  destroyPlot() {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
  }

  destroy() {
    window.removeEventListener('resize', this.onResize);
    this.destroyPlot();
  }
}

// {x, y} of points for the chosen axis: steps, or seconds since t0 (the
// job's first point) for wall time; ys (e.g. smoothed values) default to the
// points' values. Points without a time are left out in wall mode.
export function toXY(pts, xMode, t0, ys) {
  const x = [], y = [];
  pts.forEach((p, i) => {
    const xv = xMode === 'wall' ? (p.wall === null ? null : p.wall - t0) : p.step;
    if (xv === null) return;
    x.push(xv);
    y.push(ys ? ys[i] : p.value);
  });
  return { x, y };
}
