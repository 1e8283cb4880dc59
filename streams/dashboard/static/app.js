/* spendwatch dashboard: a read-only live view over the JSON API (/api/v1/...).
 *
 * No framework, no build step, no CDN. Every name on this page (workflows, teams, agents,
 * runs, alert text) is caller input: it reaches the DOM only through textContent,
 * createElement and setAttribute on fixed, non-script attributes, never innerHTML.
 * The page polls every 2 s and updates the nodes it built in place (rows are keyed),
 * so nothing flickers; a failed poll keeps the last data on screen under a stale banner.
 */
"use strict";

(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 8000;
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLORS = 8;
  const OTHER = "\u0000other";

  // -- DOM helpers (text only) ----------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const kid of kids) if (kid != null) node.append(kid); // strings become text nodes
    return node;
  }

  function s(tag, attrs) {
    const node = document.createElementNS(SVGNS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.setAttribute("class", v);
      else node.setAttribute(k, String(v));
    }
  }

  function setText(node, text) {
    const t = text == null ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function setAttr(node, name, value) {
    const v = value == null ? null : String(value);
    if (v === null) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== v) {
      node.setAttribute(name, v);
    }
  }

  function show(node, visible) {
    if (node.hidden === visible) node.hidden = !visible;
  }

  function toggleClass(node, cls, on) {
    if (node.classList.contains(cls) !== Boolean(on)) node.classList.toggle(cls, Boolean(on));
  }

  /** Keep `tbody`'s rows equal to `rows`: rows are keyed, reused and moved, never rebuilt. */
  function syncRows(tbody, rows, key, cols, decorate, empty) {
    const held = new Map();
    for (const tr of Array.from(tbody.children)) held.set(tr.dataset.key, tr);
    let prev = null;
    const keep = new Set();
    for (const row of rows) {
      const k = String(key(row));
      if (keep.has(k)) continue;
      keep.add(k);
      let tr = held.get(k);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.key = k;
        for (const col of cols) tr.append(h("td", { class: col.cls || null }));
      }
      cols.forEach((col, i) => col.render(tr.children[i], row));
      if (decorate) decorate(tr, row);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const [k, tr] of held) if (!keep.has(k)) tr.remove();
    if (empty) show(empty, keep.size === 0);
  }

  /** Same as syncRows, for list items (or any children built by `build`). */
  function syncList(parent, items, key, build, update, empty) {
    const held = new Map();
    for (const node of Array.from(parent.children)) held.set(node.dataset.key, node);
    let prev = null;
    const keep = new Set();
    for (const item of items) {
      const k = String(key(item));
      if (keep.has(k)) continue;
      keep.add(k);
      let node = held.get(k);
      if (!node) {
        node = build(item);
        node.dataset.key = k;
      }
      update(node, item);
      const want = prev ? prev.nextSibling : parent.firstChild;
      if (want !== node) parent.insertBefore(node, want);
      prev = node;
    }
    for (const [k, node] of held) if (!keep.has(k)) node.remove();
    if (empty) show(empty, keep.size === 0);
  }

  // -- formatting ---------------------------------------------------------------------------------

  const INT = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const USD0 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 0, maximumFractionDigits: 0 });
  const USD2 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  /** Dollars as the CLI and Slack show them (detectors.pricing.money.fmt_usd): $0.0042, $12.34, $1,234. */
  function usd(v) {
    if (v == null || !Number.isFinite(v)) return "—";
    if (v === 0) return "$0.00";
    const sign = v < 0 ? "-" : "";
    const a = Math.abs(v);
    if (a >= 1000) return `${sign}$${USD0.format(a)}`;
    if (a >= 1) return `${sign}$${USD2.format(a)}`;
    return `${sign}$${a.toFixed(4)}`;
  }

  function num(v) {
    return v == null ? "—" : INT.format(v);
  }

  function compact(v) {
    if (v == null) return "—";
    if (v >= 1e9) return `${(v / 1e9).toFixed(1)}B`;
    if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (v >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
    return INT.format(v);
  }

  function pct(share) {
    if (share == null) return "—";
    const p = share * 100;
    return `${p < 10 && p > 0 ? p.toFixed(1) : Math.round(p)}%`;
  }

  const pad = (n) => String(n).padStart(2, "0");

  function clock(ts, seconds = true) {
    if (!ts) return "—";
    const d = new Date(ts * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ""}`;
  }

  function stamp(ts) {
    if (!ts) return "—";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ts)}`;
  }

  function span(seconds) {
    const a = Math.abs(seconds);
    if (a < 60) return `${Math.round(a)} s`;
    if (a < 3600) return `${Math.round(a / 60)} min`;
    if (a < 86400 * 2) return `${(a / 3600).toFixed(a < 36000 ? 1 : 0)} h`;
    return `${Math.round(a / 86400)} d`;
  }

  function ago(ts, now) {
    if (!ts || !now) return "";
    const d = now - ts;
    return d < 1 ? "just now" : `${span(d)} ago`;
  }

  // -- small widgets ------------------------------------------------------------------------------

  function workflowHref(name) {
    return `/workflow/${encodeURIComponent(name)}`;
  }

  /** A cell holding one link to a workflow (kept, only its text and target updated). */
  function linkInto(td, name, extra) {
    let a = td.querySelector("a.wf");
    if (!a) {
      a = h("a", { class: "wf", "data-testid": "workflow-link" });
      td.prepend(a);
    }
    setAttr(a, "href", workflowHref(name));
    setText(a, name);
    setAttr(a, "title", name);
    if (extra) extra(td);
  }

  function badge(td, cls, text, on, testid) {
    let b = td.querySelector(`.badge.${cls}`);
    if (on && !b) {
      b = h("span", { class: `badge ${cls}`, "data-testid": testid || null });
      td.append(b);
    }
    if (b) {
      show(b, on);
      setText(b, text);
    }
    return b;
  }

  /** A burn bar: an SVG (CSP-safe: no style attributes) whose fill width is the share used. */
  function makeBar() {
    const svg = s("svg", { class: "bar", viewBox: "0 0 100 8", preserveAspectRatio: "none", "aria-hidden": "true" });
    svg.append(s("rect", { class: "track", width: 100, height: 8, rx: 2 }), s("rect", { class: "fill", width: 0, height: 8, rx: 2 }));
    return svg;
  }

  function setBar(svg, share) {
    const fill = svg.lastChild;
    const w = share == null ? 0 : Math.max(0, Math.min(100, share * 100));
    setAttr(fill, "width", w.toFixed(2));
    const level = share == null ? "none" : share >= 1 ? "over" : share >= 0.75 ? "warn" : "ok";
    setAttr(svg, "class", `bar ${level}`);
  }

  function barCell(td, share) {
    let wrap = td.firstChild;
    if (!wrap) {
      wrap = h("span", { class: "barcell" });
      wrap.append(makeBar(), h("span", { class: "barpct" }));
      td.append(wrap);
    }
    setBar(wrap.firstChild, share);
    setText(wrap.lastChild, share == null ? "—" : pct(share));
    toggleClass(wrap, "nobudget", share == null);
  }

  function moneyCell(td, v) {
    setText(td, usd(v));
    setAttr(td, "data-usd", v == null ? null : v);
    setAttr(td, "title", v == null ? null : `$${v}`);
  }

  /** A command in a <code> (selectable) with a Copy button (navigator.clipboard when the page may use it). */
  function copyBox(td, text, testid) {
    let box = td.querySelector(".copy");
    if (!text) {
      if (box) box.remove();
      return;
    }
    if (!box) {
      const code = h("code", { "data-testid": testid });
      const btn = h("button", { type: "button", class: "copybtn", title: "copy to the clipboard", text: "Copy" });
      btn.addEventListener("click", () => copy(code, btn));
      box = h("div", { class: "copy" }, code, btn);
      td.append(box);
    }
    setText(box.firstChild, text);
  }

  function copy(code, btn) {
    const text = code.textContent;
    const done = (ok) => {
      btn.textContent = ok ? "Copied" : "Select + Ctrl-C";
      setTimeout(() => { btn.textContent = "Copy"; }, 1600);
    };
    const select = () => {
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => done(true), () => { select(); done(false); });
    } else {
      select();
      done(false);
    }
  }

  function sparkline(td, points, now) {
    let svg = td.querySelector("svg.spark");
    if (!svg) {
      svg = s("svg", { class: "spark", viewBox: "0 0 120 24", preserveAspectRatio: "none", "aria-hidden": "true" });
      svg.append(s("path", { class: "area" }), s("path", { class: "line" }));
      td.append(svg);
    }
    const n = 60;
    const v = grid(points, minuteStart(now) - (n - 1) * 60, n);
    const max = Math.max(...v, 0);
    const x = (i) => (i * 120) / (n - 1);
    const y = (val) => (max > 0 ? 22 - (val / max) * 20 : 22);
    const line = v.map((val, i) => `${i ? "L" : "M"}${x(i).toFixed(1)} ${y(val).toFixed(1)}`).join("");
    setAttr(svg.lastChild, "d", line);
    setAttr(svg.firstChild, "d", `${line}L120 24L0 24Z`);
  }

  // -- time grids for the charts ------------------------------------------------------------------

  const minuteStart = (ts) => Math.floor(ts / 60) * 60;

  /** Points [[minute start, usd], ...] summed on a dense grid of `n` bins of `step` seconds from `start`. */
  function grid(points, start, n, step = 60) {
    const v = new Array(n).fill(0);
    for (const [t, val] of points || []) {
      const i = Math.floor((t - start + 1e-6) / step);
      if (i >= 0 && i < n) v[i] += val;
    }
    return v;
  }

  const sum = (v) => v.reduce((a, b) => a + b, 0);

  function niceStep(raw) {
    if (!(raw > 0)) return 1;
    const exp = 10 ** Math.floor(Math.log10(raw));
    const f = raw / exp;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * exp;
  }

  function axisUsd(v, step) {
    if (v >= 1000) return `$${(v / 1000).toFixed(step >= 1000 ? 0 : 1)}k`;
    let d = 0; // as many decimals as the step needs: $0.25 steps show $0.50, not $1
    while (d < 6 && Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) > 1e-9) d += 1;
    return `$${v.toFixed(d)}`;
  }

  // -- a stacked per-minute bar chart in SVG ------------------------------------------------------

  class Chart {
    constructor(host, opts) {
      this.host = host;
      this.height = opts.height || 220;
      this.tickMinutes = opts.tickMinutes || 10;
      this.step = opts.step || 60; // seconds a bar covers
      this.emptyText = opts.empty || "waiting for data";
      this.colors = new Map();
      this.paths = new Map();
      this.data = null;
      this.svg = s("svg", { class: "chart-svg", height: this.height, role: "img", "aria-label": opts.label });
      this.gGrid = s("g", { class: "gridlines" });
      this.gBars = s("g", { class: "bars" });
      this.gAxis = s("g", { class: "axis" });
      this.band = s("rect", { class: "hover-band", visibility: "hidden" });
      this.tip = s("g", { class: "tip", visibility: "hidden" });
      this.tipBg = s("rect", { class: "tip-bg", rx: 4 });
      this.tipBody = s("g");
      this.tip.append(this.tipBg, this.tipBody);
      this.empty = s("text", { class: "chart-empty", "text-anchor": "middle", visibility: "hidden" });
      this.svg.append(this.gGrid, this.band, this.gBars, this.gAxis, this.empty, this.tip);
      host.append(this.svg);
      this.hoverIndex = null;
      this.svg.addEventListener("mousemove", (e) => this.hover(e));
      this.svg.addEventListener("mouseleave", () => this.unhover());
      if ("ResizeObserver" in window) new ResizeObserver(() => this.draw()).observe(host);
      else window.addEventListener("resize", () => this.draw());
    }

    colorOf(name) {
      if (name === OTHER) return "cother";
      return `c${this.colors.get(name) ?? 0}`;
    }

    /** data: {start (epoch s of the first bar), n (bars of `step` seconds), layers: [{name, label, values}]} */
    set(data, resetColors) {
      if (resetColors) this.colors.clear();
      const names = new Set(data.layers.map((l) => l.name));
      for (const name of Array.from(this.colors.keys())) if (!names.has(name)) this.colors.delete(name);
      const used = new Set(this.colors.values());
      for (const l of data.layers) {
        if (l.name === OTHER || this.colors.has(l.name)) continue;
        let c = 0;
        while (used.has(c) && c < COLORS) c += 1;
        this.colors.set(l.name, c % COLORS);
        used.add(c % COLORS);
      }
      this.data = data;
      this.draw();
    }

    geometry() {
      const W = Math.max(240, Math.floor(this.host.clientWidth || 600));
      const m = { l: 58, r: 8, t: 10, b: 24 };
      return { W, H: this.height, m, pw: W - m.l - m.r, ph: this.height - m.t - m.b };
    }

    draw() {
      const d = this.data;
      if (!d) return;
      const g = this.geometry();
      this.g = g;
      setAttr(this.svg, "viewBox", `0 0 ${g.W} ${g.H}`);
      setAttr(this.svg, "width", g.W);
      const totals = new Array(d.n).fill(0);
      for (const l of d.layers) l.values.forEach((v, i) => { totals[i] += v; });
      this.totals = totals;
      const peak = Math.max(0, ...totals);
      const step = niceStep(peak / 4);
      const max = peak > 0 ? Math.ceil(peak / step - 1e-9) * step : 4 * step;
      const y = (v) => g.m.t + g.ph - (v / max) * g.ph;
      const bw = g.pw / d.n;
      const gap = bw > 5 ? 1 : 0;
      this.bw = bw;

      // grid and y labels
      const gridKids = [];
      for (let v = 0; v <= max + step / 2; v += step) {
        const yy = y(v).toFixed(1);
        gridKids.push(s("line", { x1: g.m.l, x2: g.W - g.m.r, y1: yy, y2: yy }));
        gridKids.push(s("text", { x: g.m.l - 6, y: yy, dy: "0.32em", "text-anchor": "end", text: axisUsd(v, step) }));
      }
      this.gGrid.replaceChildren(...gridKids);

      // x labels: whole ticks of local clock time
      const axisKids = [s("line", { class: "baseline", x1: g.m.l, x2: g.W - g.m.r, y1: y(0), y2: y(0) })];
      const tz = new Date(d.start * 1000).getTimezoneOffset() * 60;
      for (let i = 0; i < d.n; i += 1) {
        const t = d.start + i * this.step;
        if (Math.round((t - tz) / 60) % this.tickMinutes !== 0) continue;
        const xx = g.m.l + i * bw + bw / 2;
        axisKids.push(s("line", { x1: xx, x2: xx, y1: y(0), y2: y(0) + 4 }));
        axisKids.push(s("text", { x: xx, y: g.H - 6, "text-anchor": "middle", text: clock(t, false) }));
      }
      this.gAxis.replaceChildren(...axisKids);

      // stacked bars: one path per layer, a rectangle per non-zero minute
      const base = new Array(d.n).fill(0);
      const keep = new Set();
      for (const l of d.layers) {
        keep.add(l.name);
        let path = this.paths.get(l.name);
        if (!path) {
          path = s("path", {});
          this.paths.set(l.name, path);
        }
        this.gBars.append(path); // re-appending keeps the stacking order equal to the layer order
        const parts = [];
        l.values.forEach((v, i) => {
          if (v <= 0) return;
          const top = y(base[i] + v);
          const bottom = y(base[i]);
          base[i] += v;
          const h0 = Math.max(bottom - top, 0.75);
          parts.push(`M${(g.m.l + i * bw + gap / 2).toFixed(2)} ${(bottom - h0).toFixed(2)}h${Math.max(bw - gap, 0.6).toFixed(2)}v${h0.toFixed(2)}h${(-Math.max(bw - gap, 0.6)).toFixed(2)}Z`);
        });
        setAttr(path, "d", parts.join("") || "M0 0");
        setAttr(path, "class", `layer ${this.colorOf(l.name)}`);
      }
      for (const [name, path] of this.paths) {
        if (!keep.has(name)) {
          path.remove();
          this.paths.delete(name);
        }
      }
      const empty = peak <= 0;
      setAttr(this.empty, "visibility", empty ? "visible" : "hidden");
      setAttr(this.empty, "x", g.m.l + g.pw / 2);
      setAttr(this.empty, "y", g.m.t + g.ph / 2);
      setText(this.empty, this.emptyText);
      if (this.hoverIndex != null) this.showTip(this.hoverIndex);
    }

    hover(e) {
      if (!this.data || !this.g) return;
      const rect = this.svg.getBoundingClientRect();
      const mx = ((e.clientX - rect.left) * this.g.W) / rect.width;
      const i = Math.floor((mx - this.g.m.l) / this.bw);
      if (i < 0 || i >= this.data.n) return this.unhover();
      this.hoverIndex = i;
      this.showTip(i);
      return undefined;
    }

    unhover() {
      this.hoverIndex = null;
      setAttr(this.band, "visibility", "hidden");
      setAttr(this.tip, "visibility", "hidden");
    }

    showTip(i) {
      const { g, data: d } = this;
      setAttr(this.band, "x", (g.m.l + i * this.bw).toFixed(2));
      setAttr(this.band, "y", g.m.t);
      setAttr(this.band, "width", Math.max(this.bw, 1).toFixed(2));
      setAttr(this.band, "height", g.ph);
      setAttr(this.band, "visibility", "visible");
      const t = d.start + i * this.step;
      const rows = d.layers.filter((l) => l.values[i] > 0).sort((a, b) => b.values[i] - a.values[i]).slice(0, 8);
      const kids = [s("text", { class: "tip-title", x: 10, y: 18, text: `${clock(t, false)}${this.step > 60 ? `–${clock(t + this.step, false)}` : ""}  ·  ${usd(this.totals[i])}${this.step > 60 ? "" : "/min"}` })];
      rows.forEach((l, k) => {
        const yy = 36 + k * 17;
        kids.push(s("rect", { class: `swatch ${this.colorOf(l.name)}`, x: 10, y: yy - 9, width: 9, height: 9, rx: 2 }));
        const line = s("text", { x: 24, y: yy });
        line.append(s("tspan", { text: `${usd(l.values[i])}  ` }), s("tspan", { class: "tip-name", text: truncate(l.label || l.name, 40) }));
        kids.push(line);
      });
      if (!rows.length) kids.push(s("text", { x: 10, y: 36, class: "tip-name", text: "no spend" }));
      this.tipBody.replaceChildren(...kids);
      setAttr(this.tip, "visibility", "visible");
      const box = this.tipBody.getBBox();
      const w = Math.ceil(box.width) + 20;
      const hh = Math.ceil(box.height) + 14;
      setAttr(this.tipBg, "width", w);
      setAttr(this.tipBg, "height", hh);
      let x = g.m.l + (i + 1) * this.bw + 10;
      if (x + w > g.W - 2) x = Math.max(2, g.m.l + i * this.bw - 10 - w);
      setAttr(this.tip, "transform", `translate(${x.toFixed(1)} ${g.m.t})`);
    }
  }

  function truncate(text, n) {
    return text.length > n ? `${text.slice(0, n - 1)}…` : text;
  }

  // -- the API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, { allow404 } = {}) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    let r;
    try {
      r = await fetch(path, { signal: ctl.signal, cache: "no-store", headers: { Accept: "application/json" } });
    } catch (err) {
      throw new ApiError(0, err && err.name === "AbortError" ? "The API did not answer within 8 s" : "Cannot reach the dashboard server");
    } finally {
      clearTimeout(timer);
    }
    if (r.status === 404 && allow404) return null;
    if (r.status === 401) throw new ApiError(401, "This dashboard needs its token: open it once as /?token=…");
    if (!r.ok) throw new ApiError(r.status, `The API answered HTTP ${r.status} for ${path.split("?")[0]}`);
    try {
      return await r.json();
    } catch (err) {
      throw new ApiError(r.status, `The API sent a malformed answer for ${path.split("?")[0]}`);
    }
  }

  // -- page state ---------------------------------------------------------------------------------

  const SORTS = ["today", "hour", "month", "name", "per_outcome"];
  const params = new URLSearchParams(location.search);
  const state = {
    sort: SORTS.includes(params.get("sort")) ? params.get("sort") : "today",
    mode: params.get("by") === "teams" ? "teams" : "workflows",
    lastOk: 0,
    dataNow: 0,
    failing: null,
    lastSeries: null,
  };

  function routeWorkflow() {
    const m = location.pathname.match(/^\/workflow\/(.+)$/);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (err) {
      return m[1];
    }
  }

  function setFreshness() {
    const dot = $("dot");
    const label = $("last-updated");
    const stale = $("stale");
    if (state.failing) {
      setAttr(dot, "class", "dot bad");
      const since = state.lastOk ? `showing data from ${clock(state.lastOk / 1000)} (${span((Date.now() - state.lastOk) / 1000)} ago)` : "no data loaded yet";
      setText(stale, `${state.failing.message} — ${since}; retrying every ${POLL_MS / 1000} s.`);
      show(stale, true);
      setText(label, state.lastOk ? `updated ${clock(state.lastOk / 1000)} · stale` : "not connected");
    } else {
      setAttr(dot, "class", "dot ok");
      show(stale, false);
      const events = state.dataNow ? ` · events to ${clock(state.dataNow)}` : "";
      setText(label, `updated ${clock(state.lastOk / 1000)}${events}`);
    }
  }

  function waiting(health, summary) {
    const box = $("waiting");
    let msg = "";
    if (health && health.ready === false) msg = "Catching up with Kafka: reading the snapshots, alerts and control topics…";
    else if (summary && summary.workflows === 0) {
      msg = "Waiting for data: no workflow snapshots yet. Workers publish one every few seconds for each workflow that spends; this page updates by itself.";
    }
    setText(box, msg);
    show(box, Boolean(msg));
  }

  // -- overview -----------------------------------------------------------------------------------

  let mainChart = null;

  function renderTiles(sm) {
    const none = sm.workflows === 0;
    setText($("t-today"), none ? "—" : usd(sm.today_usd));
    setAttr($("t-today"), "data-usd", sm.today_usd);
    setText($("t-today-sub"), `${num(sm.calls_today)} calls · ${num(sm.errors_today)} errors`);
    setAttr($("t-today-sub"), "title", `${num(sm.tokens_today.input)} input tokens (${num(sm.tokens_today.cache_read)} cache reads), ${num(sm.tokens_today.output)} output tokens (${num(sm.tokens_today.reasoning)} reasoning)`);
    setText($("t-month"), none ? "—" : usd(sm.month_usd));
    setAttr($("t-month"), "data-usd", sm.month_usd);
    setText($("t-month-sub"), sm.month ? `${num(sm.workflows)} workflows · ${num(sm.teams)} teams` : "");
    setText($("t-hour"), none ? "—" : usd(sm.hour_usd));
    setAttr($("t-hour"), "data-usd", sm.hour_usd);
    setText($("t-hour-sub"), sm.hour_usd > 0 ? `≈ ${usd(sm.hour_usd * 24)} / day at this rate` : "no spend in the last hour");
    setText($("t-outcome"), sm.usd_per_outcome_today == null ? "—" : usd(sm.usd_per_outcome_today));
    setAttr($("t-outcome"), "data-usd", sm.usd_per_outcome_today);
    setText($("t-outcome-sub"), sm.outcomes_today
      ? `${num(sm.outcomes_today)} outcomes${sm.outcome_value_today_usd ? ` · worth ${usd(sm.outcome_value_today_usd)}` : ""}`
      : "no outcomes today");
    setText($("t-alerts"), num(sm.open_alerts));
    toggleClass($("t-alerts").parentElement, "hot", sm.open_alerts > 0);
    setText($("t-alerts-sub"), sm.open_alerts ? "firing in the last 24 h" : "all quiet");
    setText($("t-kills"), num(sm.active_kills));
    toggleClass($("t-kills").parentElement, "hot", sm.active_kills > 0);
    setText($("t-kills-sub"), sm.active_kills ? "workflows, agents or runs stopped" : "nothing stopped");
  }

  function renderBudgets(rows) {
    syncList($("budgets"), rows, (r) => r.workflow, (r) => {
      const li = h("li", { "data-testid": "budget-row" });
      const head = h("div", { class: "bhead" }, h("a", { class: "wf" }), h("span", { class: "badge killed", text: "over budget" }));
      const line = (label) => h("div", { class: "bline" }, h("span", { class: "blabel", text: label }), makeBar(),
        h("span", { class: "bnums" }, h("span", { class: "muted" }), h("strong", { class: "bpct" })));
      li.append(head, line("today"), line("month"));
      return li;
    }, (li, r) => {
      li.dataset.workflow = r.workflow;
      const [head, day, month] = li.children;
      const a = head.firstChild;
      setAttr(a, "href", workflowHref(r.workflow));
      setText(a, r.workflow);
      setAttr(a, "title", r.workflow);
      show(head.lastChild, (r.day_used || 0) >= 1 || (r.month_used || 0) >= 1);
      for (const [node, share, spent, limit] of [[day, r.day_used, r.today_usd, r.day_budget_usd],
        [month, r.month_used, r.month_usd, r.month_budget_usd]]) {
        show(node, share != null);
        setBar(node.children[1], share);
        const nums = node.children[2];
        setText(nums.firstChild, limit != null ? `${usd(spent)} of ${usd(limit)} · ` : "");
        setText(nums.lastChild, pct(share));
        toggleClass(nums.lastChild, "over", share != null && share >= 1);
      }
    }, $("budgets-empty"));
  }

  function renderChart(series) {
    state.lastSeries = series;
    if (!mainChart) mainChart = new Chart($("chart"), { height: 230, tickMinutes: 10, label: "spend per minute, last 60 minutes" });
    const n = series.minutes;
    const start = series.now ? minuteStart(series.now) - (n - 1) * 60 : minuteStart(Date.now() / 1000) - (n - 1) * 60;
    const total = grid(series.total, start, n);
    const source = state.mode === "teams" ? series.teams : series.workflows;
    const layers = Object.entries(source || {}).map(([name, pts]) => ({ name, label: name, values: grid(pts, start, n) }));
    layers.sort((a, b) => sum(b.values) - sum(a.values) || (a.name < b.name ? -1 : 1));
    const rest = total.map((v, i) => {
      const r = v - layers.reduce((acc, l) => acc + l.values[i], 0);
      return r > 1e-7 ? r : 0;
    });
    if (sum(rest) > 1e-7) layers.push({ name: OTHER, label: state.mode === "teams" ? "no team" : "all other workflows", values: rest });
    mainChart.set({ start, n, layers }, state.modeChanged);
    state.modeChanged = false;
    syncList($("legend"), layers, (l) => l.name, () => {
      const li = h("li", { "data-testid": "legend-item" });
      const sw = s("svg", { class: "sw", viewBox: "0 0 10 10", width: 10, height: 10, "aria-hidden": "true" });
      sw.append(s("rect", { width: 10, height: 10, rx: 2 }));
      li.append(sw, h("span", { class: "lname" }), h("span", { class: "lval muted" }));
      return li;
    }, (li, l) => {
      setAttr(li.firstChild.firstChild, "class", mainChart.colorOf(l.name));
      const nameNode = li.children[1];
      if (state.mode === "workflows" && l.name !== OTHER) {
        let a = nameNode.firstChild;
        if (!a || a.nodeName !== "A") {
          a = h("a", {});
          nameNode.replaceChildren(a);
        }
        setAttr(a, "href", workflowHref(l.name));
        setText(a, l.label);
      } else if (nameNode.firstChild && nameNode.firstChild.nodeName === "A") {
        nameNode.replaceChildren(l.label);
      } else {
        setText(nameNode, l.label);
      }
      setText(li.lastChild, usd(sum(l.values)));
    });
  }

  function renderWorkflows(body) {
    setText($("wf-count"), body.total > body.workflows.length ? `${body.workflows.length} of ${num(body.total)}` : num(body.total));
    syncRows($("wf-body"), body.workflows, (r) => r.workflow, [
      { render: (td, r) => linkInto(td, r.workflow, () => badge(td, "killed", "killed", r.killed, "killed-badge")) },
      { cls: "muted", render: (td, r) => setText(td, r.team || "—") },
      { cls: "r strong", render: (td, r) => moneyCell(td, r.today_usd) },
      { cls: "r", render: (td, r) => moneyCell(td, r.hour_usd) },
      { cls: "r", render: (td, r) => moneyCell(td, r.month_usd) },
      { cls: "r", render: (td, r) => setText(td, num(r.calls_today)) },
      {
        cls: "r",
        render: (td, r) => {
          const rate = r.calls_today ? r.errors_today / r.calls_today : 0;
          setText(td, r.errors_today ? `${num(r.errors_today)} (${pct(rate)})` : "0");
          toggleClass(td, "warn", rate >= 0.05);
        },
      },
      { cls: "r", render: (td, r) => moneyCell(td, r.usd_per_outcome_today) },
      { render: (td, r) => barCell(td, r.budget_used ? r.budget_used.day_used : null) },
      {
        cls: "r",
        render: (td, r) => {
          setText(td, r.open_alerts ? String(r.open_alerts) : "—");
          toggleClass(td, "hotnum", r.open_alerts > 0);
        },
      },
    ], (tr, r) => {
      setAttr(tr, "data-testid", "workflow-row");
      setAttr(tr, "data-workflow", r.workflow);
      toggleClass(tr, "is-killed", r.killed);
    }, $("wf-empty"));
    for (const th of document.querySelectorAll("th[data-sort]")) {
      const on = th.dataset.sort === state.sort;
      setAttr(th, "aria-sort", on ? (state.sort === "name" ? "ascending" : "descending") : null);
    }
  }

  function alertCols(withWorkflow) {
    const cols = [
      {
        render: (td, a) => {
          let b = td.firstChild;
          if (!b) {
            b = h("span", {});
            td.append(b);
          }
          setAttr(b, "class", `sev ${["critical", "warning", "info"].includes(a.severity) ? a.severity : "info"}`);
          setText(b, a.severity);
        },
      },
      { render: (td, a) => setText(td, a.kind) },
    ];
    if (withWorkflow) cols.push({ render: (td, a) => linkInto(td, a.workflow) });
    cols.push(
      {
        cls: "what",
        render: (td, a) => {
          let p = td.querySelector(".summary");
          if (!p) {
            p = h("div", { class: "summary", "data-testid": "alert-summary" });
            td.prepend(p);
          }
          setText(p, a.summary);
          let scope = td.querySelector(".scope");
          const who = [a.team && `team ${a.team}`, a.agent_id && `agent ${a.agent_id}`, a.run_id && `run ${a.run_id}`].filter(Boolean).join(" · ");
          if (!scope) {
            scope = h("div", { class: "scope muted small" });
            p.after(scope);
          }
          setText(scope, who);
          show(scope, Boolean(who));
          copyBox(td, a.undo, "undo-cmd");
        },
      },
      {
        render: (td, a) => {
          let b = td.firstChild;
          if (!b) {
            b = h("span", {});
            td.append(b);
          }
          setAttr(b, "class", `action a-${a.action === "kill" ? "kill" : a.action === "dry-run" ? "dry" : "none"}`);
          setText(b, a.action === "kill" && a.kill_scope ? `kill ${a.kill_scope.replace("_id", "")}` : a.action);
        },
      },
      {
        cls: "r nowrap",
        render: (td, a) => {
          setText(td, clock(a.ts));
          setAttr(td, "title", `${stamp(a.ts)} (event time)${a.revision ? ` · updated ${a.revision}×` : ""}`);
        },
      },
    );
    return cols;
  }

  function renderAlerts(rows) {
    setText($("alerts-count"), rows.length ? String(rows.length) : "");
    syncRows($("alerts-body"), rows, (a) => a.alert_id, alertCols(true), (tr, a) => {
      setAttr(tr, "data-testid", "alert-row");
      setAttr(tr, "data-alert-id", a.alert_id);
      setAttr(tr, "data-kind", a.kind);
      setAttr(tr, "data-workflow", a.workflow);
    }, $("alerts-empty"));
  }

  function killCols(withWorkflow) {
    const cols = [
      {
        render: (td, k) => {
          let scope = td.querySelector(".kscope");
          if (!scope) {
            scope = h("span", { class: "kscope" });
            td.append(scope, h("span", { class: "ktarget", "data-testid": "kill-target" }));
          }
          setText(scope, k.scope.replace("_id", ""));
          setText(td.lastChild, k.target);
          setAttr(td.lastChild, "title", k.target);
        },
      },
    ];
    if (withWorkflow) cols.push({ render: (td, k) => (k.workflow ? linkInto(td, k.workflow) : setText(td, "—")) });
    cols.push(
      {
        cls: "what",
        render: (td, k) => {
          let p = td.querySelector(".summary");
          if (!p) {
            p = h("div", { class: "summary" });
            td.prepend(p);
          }
          setText(p, k.reason);
          copyBox(td, k.release, "release-cmd");
        },
      },
      {
        cls: "r nowrap",
        render: (td, k) => {
          const left = k.expires_at - Date.now() / 1000;
          setText(td, left > 0 ? `in ${span(left)}` : "expired");
          setAttr(td, "title", `issued ${stamp(k.issued_at)} by ${k.issued_by || "?"}; expires ${stamp(k.expires_at)}`);
        },
      },
    );
    return cols;
  }

  function renderKills(rows) {
    setText($("kills-count"), rows.length ? String(rows.length) : "");
    syncRows($("kills-body"), rows, (k) => `${k.scope}\u0000${k.target}`, killCols(true), (tr, k) => {
      setAttr(tr, "data-testid", "kill-row");
      setAttr(tr, "data-target", k.target);
      setAttr(tr, "data-workflow", k.workflow);
    }, $("kills-empty"));
  }

  function renderMovers(rows) {
    syncRows($("movers-body"), rows, (r) => r.workflow, [
      { render: (td, r) => linkInto(td, r.workflow) },
      { cls: "r strong", render: (td, r) => moneyCell(td, r.hour_usd) },
      { cls: "r muted", render: (td, r) => moneyCell(td, r.usual_hour_usd) },
      {
        cls: "r",
        render: (td, r) => {
          setText(td, r.ratio == null ? `new · +${usd(r.delta_usd)}` : `×${r.ratio.toFixed(1)} · +${usd(r.delta_usd)}`);
          toggleClass(td, "up", true);
        },
      },
    ], (tr, r) => {
      setAttr(tr, "data-testid", "mover-row");
      setAttr(tr, "data-workflow", r.workflow);
    }, $("movers-empty"));
  }

  function renderTeams(rows, now) {
    syncRows($("teams-body"), rows, (r) => r.team, [
      { render: (td, r) => setText(td, r.team) },
      { cls: "r strong", render: (td, r) => moneyCell(td, r.today_usd) },
      { cls: "r", render: (td, r) => moneyCell(td, r.hour_usd) },
      { cls: "r", render: (td, r) => moneyCell(td, r.month_usd) },
      { cls: "r", render: (td, r) => setText(td, num(r.workflows)) },
      { render: (td, r) => barCell(td, r.budget_used ? r.budget_used.day_used : null) },
      { cls: "sparkcell", render: (td, r) => sparkline(td, r.series, now) },
    ], (tr, r) => {
      setAttr(tr, "data-testid", "team-row");
      setAttr(tr, "data-team", r.team);
    }, $("teams-empty"));
  }

  function outcomeCols(withWorkflow) {
    const cols = [];
    if (withWorkflow) cols.push({ render: (td, r) => linkInto(td, r.workflow) });
    cols.push({ render: (td, r) => setText(td, r.outcome) });
    if (!withWorkflow) cols.push({ cls: "muted", render: (td, r) => setText(td, r.period === "day" ? "today" : "this month") });
    cols.push({ cls: "r", render: (td, r) => setText(td, num(r.count)) });
    if (withWorkflow) cols.push({ cls: "r", render: (td, r) => moneyCell(td, r.cost_usd) });
    cols.push({ cls: "r strong", render: (td, r) => moneyCell(td, r.usd_per_outcome) });
    if (withWorkflow) cols.push({ cls: "r", render: (td, r) => moneyCell(td, r.value_usd) });
    cols.push({
      cls: "r",
      render: (td, r) => {
        setText(td, r.value_per_usd == null ? "—" : `${r.value_per_usd.toFixed(2)}×`);
        toggleClass(td, "good", r.value_per_usd != null && r.value_per_usd >= 1);
        toggleClass(td, "warn", r.value_per_usd != null && r.value_per_usd < 1);
      },
    });
    return cols;
  }

  function renderOutcomes(rows) {
    syncRows($("outcomes-body"), rows, (r) => `${r.workflow}\u0000${r.outcome}`, outcomeCols(true), (tr, r) => {
      setAttr(tr, "data-testid", "outcome-row");
      setAttr(tr, "data-workflow", r.workflow);
      setAttr(tr, "data-outcome", r.outcome);
    }, $("outcomes-empty"));
  }

  const LEVERS = { right_sizing: "right-size model", caching: "prompt caching", context_bloat: "context bloat",
    token_waste: "token waste" };

  function renderInsights(rows) {
    syncRows($("insights-body"), rows, (r) => `${r.workflow}\u0000${r.kind}\u0000${r.model || ""}`, [
      { render: (td, r) => linkInto(td, r.workflow) },
      { render: (td, r) => setText(td, LEVERS[r.kind] || r.kind) },
      { cls: "muted", render: (td, r) => setText(td, r.model || "—") },
      { cls: "r strong", render: (td, r) => moneyCell(td, r.usd_per_day) },
      { cls: "r", render: (td, r) => moneyCell(td, r.usd_per_month) },
      { render: (td, r) => setText(td, r.summary) },
    ], (tr, r) => {
      setAttr(tr, "data-testid", "insight-row");
      setAttr(tr, "data-workflow", r.workflow);
      setAttr(tr, "data-kind", r.kind);
    }, $("insights-empty"));
  }

  async function refreshOverview() {
    const [health, summary, series, workflows, teams, outcomes, alerts, kills, insights] = await Promise.all([
      api("/healthz"),
      api("/api/v1/summary"),
      api("/api/v1/series?minutes=60"),
      api(`/api/v1/workflows?sort=${encodeURIComponent(state.sort)}&limit=200`),
      api("/api/v1/teams"),
      api("/api/v1/outcomes?period=day"),
      api("/api/v1/alerts?status=open&limit=200"),
      api("/api/v1/kills"),
      api("/api/v1/insights?limit=20"),
    ]);
    state.dataNow = summary.now;
    waiting(health, summary);
    renderTiles(summary);
    renderBudgets(summary.budgets || []);
    renderChart(series);
    renderWorkflows(workflows);
    renderAlerts(alerts.alerts);
    renderKills(kills.kills);
    renderMovers(summary.movers || []);
    renderTeams(teams.teams, summary.now);
    renderOutcomes(outcomes.outcomes);
    renderInsights(insights.insights);
  }

  async function refreshWorkflowsOnly() {
    renderWorkflows(await api(`/api/v1/workflows?sort=${encodeURIComponent(state.sort)}&limit=200`));
  }

  function setupOverview() {
    show($("overview"), true);
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.tabIndex = 0;
      const pick = () => {
        if (state.sort === th.dataset.sort) return;
        state.sort = th.dataset.sort;
        rememberParams();
        refreshWorkflowsOnly().catch(() => {});
      };
      th.addEventListener("click", pick);
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          pick();
        }
      });
    }
    for (const mode of ["workflows", "teams"]) {
      $(`mode-${mode}`).addEventListener("click", () => {
        if (state.mode === mode) return;
        state.mode = mode;
        state.modeChanged = true;
        setAttr($("mode-workflows"), "aria-pressed", mode === "workflows");
        setAttr($("mode-teams"), "aria-pressed", mode === "teams");
        rememberParams();
        if (state.lastSeries) renderChart(state.lastSeries);
      });
    }
    setAttr($("mode-workflows"), "aria-pressed", state.mode === "workflows");
    setAttr($("mode-teams"), "aria-pressed", state.mode === "teams");
  }

  function rememberParams() {
    const p = new URLSearchParams();
    if (state.sort !== "today") p.set("sort", state.sort);
    if (state.mode !== "workflows") p.set("by", state.mode);
    const q = p.toString();
    history.replaceState(null, "", `${location.pathname}${q ? `?${q}` : ""}${location.hash}`);
  }

  // -- one workflow -------------------------------------------------------------------------------

  let wfChart = null;

  function spenderCols() {
    return [
      { render: (td, r) => { setText(td, r.name); setAttr(td, "title", r.name); } },
      { cls: "r strong", render: (td, r) => moneyCell(td, r.today_usd) },
      { cls: "r", render: (td, r) => moneyCell(td, r.hour_usd) },
      { cls: "r", render: (td, r) => moneyCell(td, r.month_usd) },
    ];
  }

  function renderWorkflow(name, w, kills, health, now) {
    setText($("w-name"), name);
    document.title = `${name} · spendwatch`;
    const missing = $("w-missing");
    if (!w) {
      const msg = health && health.ready === false
        ? "Catching up with Kafka…"
        : "No data for this workflow yet (names are case-sensitive). This page shows it as soon as a worker publishes its first snapshot.";
      setText(missing, msg);
      show(missing, true);
      show($("w-body"), false);
      show($("w-killed"), false);
      setText($("w-meta"), "");
      return;
    }
    show(missing, false);
    show($("w-body"), true);
    show($("w-killed"), w.killed);
    const meta = [w.team ? `team ${w.team}` : null, `last event ${stamp(w.last_event_ts)}`,
      w.unpriced_calls ? `${num(w.unpriced_calls)} calls without a price` : null].filter(Boolean).join(" · ");
    setText($("w-meta"), meta);

    const day = w.totals.day;
    const month = w.totals.month;
    moneyCell($("w-today"), w.today_usd);
    setText($("w-today-sub"), `${num(day.calls)} calls · ${num(day.errors)} errors`);
    moneyCell($("w-month"), w.month_usd);
    setText($("w-month-sub"), `${num(month.calls)} calls`);
    moneyCell($("w-hour"), w.hour_usd);
    moneyCell($("w-outcome"), w.usd_per_outcome_today);
    setText($("w-outcome-sub"), w.outcomes_today ? `${num(w.outcomes_today)} outcomes today` : "no outcomes today");
    const used = w.budget_used || {};
    setText($("w-budget"), used.day_used == null ? "—" : pct(used.day_used));
    const limits = w.budget || {};
    setText($("w-budget-sub"), used.day_used == null
      ? "no budget set"
      : [limits.day_budget_usd != null ? `of ${usd(limits.day_budget_usd)}/day` : null,
        used.month_used != null ? `month ${pct(used.month_used)}${limits.month_budget_usd != null ? ` of ${usd(limits.month_budget_usd)}` : ""}` : null]
        .filter(Boolean).join(" · "));
    toggleClass($("w-budget").parentElement, "hot", used.day_used != null && used.day_used >= 1);
    setText($("w-alerts"), num(w.open_alerts));
    toggleClass($("w-alerts").parentElement, "hot", w.open_alerts > 0);
    setText($("w-alerts-sub"), w.open_alerts ? "firing in the last 24 h" : "all quiet");

    // 24 h of minutes drawn as 288 five-minute bars (a minute is under a pixel wide at this size)
    if (!wfChart) wfChart = new Chart($("w-chart"), { height: 250, tickMinutes: 180, step: 300, label: "spend per 5 minutes, last 24 hours" });
    const n = 288;
    const start = Math.floor((now || w.last_event_ts) / 300) * 300 - (n - 1) * 300;
    wfChart.set({ start, n, layers: [{ name, label: name, values: grid(w.series, start, n, 300) }] });

    const tokenRows = [
      ["Input (whole prompt)", "input_tokens"], ["· cache reads", "cached_tokens"], ["· cache writes", "cache_write_tokens"],
      ["Output", "output_tokens"], ["· reasoning", "reasoning_tokens"], ["Calls", "calls"], ["Errors", "errors"],
      ["Spend", "cost_usd"],
    ];
    syncRows($("w-tokens"), tokenRows, (r) => r[1], [
      { render: (td, r) => setText(td, r[0]) },
      { cls: "r", render: (td, r) => (r[1] === "cost_usd" ? moneyCell(td, day.cost_usd) : setText(td, num(day[r[1]]))) },
      { cls: "r", render: (td, r) => (r[1] === "cost_usd" ? moneyCell(td, month.cost_usd) : setText(td, num(month[r[1]]))) },
    ], (tr, r) => {
      setAttr(tr, "data-testid", "token-row");
      setAttr(tr, "data-type", r[1]);
      toggleClass(tr, "sub", r[0].startsWith("·"));
    });

    syncRows($("w-models"), w.models, (r) => r.name, spenderCols(), (tr, r) => {
      setAttr(tr, "data-testid", "model-row");
      setAttr(tr, "data-model", r.name);
    }, $("w-models-empty"));
    syncRows($("w-agents"), w.agents, (r) => r.name, spenderCols(), (tr, r) => {
      setAttr(tr, "data-testid", "agent-row");
      setAttr(tr, "data-agent", r.name);
    }, $("w-agents-empty"));

    const killed = new Map();
    for (const k of kills) killed.set(`${k.scope}\u0000${k.target}`, k);
    const runs = [...w.runs_in_flight].sort((a, b) => b.usd - a.usd || b.last - a.last);
    setText($("w-runs-count"), runs.length ? String(runs.length) : "");
    syncRows($("w-runs"), runs, (r) => r.run_id, [
      { cls: "mono", render: (td, r) => { setText(td, r.run_id); setAttr(td, "title", r.run_id); } },
      { cls: "mono muted", render: (td, r) => setText(td, r.agent_id || "—") },
      { cls: "r nowrap", render: (td, r) => { setText(td, clock(r.start)); setAttr(td, "title", stamp(r.start)); } },
      { cls: "r nowrap", render: (td, r) => setText(td, ago(r.last, now) || clock(r.last)) },
      { cls: "r", render: (td, r) => setText(td, num(r.steps)) },
      { cls: "r", render: (td, r) => setText(td, num(r.calls)) },
      { cls: "r", render: (td, r) => setText(td, compact(r.tokens)) },
      { cls: "r strong", render: (td, r) => moneyCell(td, r.usd) },
      {
        render: (td, r) => {
          const kill = killed.get(`run_id\u0000${r.run_id}`) || (r.agent_id && killed.get(`agent_id\u0000${r.agent_id}`));
          badge(td, "flagged", "loop", r.flagged && !kill, "run-flagged");
          badge(td, "killed", "killed", Boolean(kill), "run-killed");
          copyBox(td, kill ? kill.release : null, "release-cmd");
        },
      },
    ], (tr, r) => {
      setAttr(tr, "data-testid", "run-row");
      setAttr(tr, "data-run", r.run_id);
      toggleClass(tr, "is-flagged", r.flagged);
    }, $("w-runs-empty"));

    syncRows($("w-outcomes"), w.outcomes, (r) => `${r.period}\u0000${r.outcome}`, outcomeCols(false), (tr, r) => {
      setAttr(tr, "data-testid", "wf-outcome-row");
      setAttr(tr, "data-outcome", r.outcome);
    }, $("w-outcomes-empty"));

    syncRows($("w-alerts-body"), w.alerts, (a) => a.alert_id, alertCols(false), (tr, a) => {
      setAttr(tr, "data-testid", "wf-alert-row");
      setAttr(tr, "data-alert-id", a.alert_id);
      setAttr(tr, "data-kind", a.kind);
      toggleClass(tr, "closed", !a.open);
    }, $("w-alerts-empty"));
  }

  async function refreshWorkflow(name) {
    const [health, w, kills] = await Promise.all([
      api("/healthz"),
      api(`/api/v1/workflows/${encodeURIComponent(name)}`, { allow404: true }),
      api("/api/v1/kills"),
    ]);
    state.dataNow = w ? w.last_event_ts : 0;
    waiting(health, null);
    renderWorkflow(name, w, kills.kills.filter((k) => !k.workflow || k.workflow === name), health, w ? w.last_event_ts : 0);
  }

  function setupWorkflow(name) {
    show($("workflow"), true);
    const crumb = $("crumb");
    setText(crumb, `/ ${name}`);
    show(crumb, true);
    setText($("w-name"), name);
    document.title = `${name} · spendwatch`;
  }

  // -- the poll loop ------------------------------------------------------------------------------

  const wfName = routeWorkflow();
  let timer = null;
  let running = false;

  async function tick() {
    if (running) return;
    running = true;
    clearTimeout(timer);
    try {
      if (wfName === null) await refreshOverview();
      else await refreshWorkflow(wfName);
      state.failing = null;
      state.lastOk = Date.now();
      document.body.dataset.loaded = "1"; // for tests and scripts: the first data has been drawn
    } catch (err) {
      state.failing = err instanceof ApiError ? err : new ApiError(-1, `The page failed to draw the data (${err && err.message})`);
      if (!(err instanceof ApiError)) console.error(err); // eslint-disable-line no-console
    } finally {
      running = false;
      setFreshness();
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
      timer = setTimeout(tick, document.hidden ? POLL_MS * 5 : POLL_MS); // a background tab polls slower
    }
  }

  function start() {
    if (wfName === null) setupOverview();
    else setupWorkflow(wfName);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    tick();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
