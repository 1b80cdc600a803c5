// UrbanSense alert board. Every value from the server is written with textContent or as an
// SVG number attribute, never parsed as HTML (the CSP also requires Trusted Types, so an HTML
// string assignment would throw).
"use strict";
(() => {
  const SEVERITIES = ["critical", "warning", "info"];
  const INACTIVE = new Set(["cleared", "suppressed"]);
  const TOKEN_KEY = "urbansense.board.token";
  const OPERATOR_KEY = "urbansense.board.operator";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const alerts = new Map(); // alert_id -> latest record
  const openEvidence = new Set(); // alert ids whose evidence the operator opened
  const cards = new Map(); // alert_id -> {seq, node}: unchanged alerts keep their DOM node across renders

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const fmtNum = (v) => (num(v) === null ? String(v ?? "–") : Number(v.toPrecision(6)).toString());
  const fmtTime = (ms) => (num(ms) === null ? "–" : new Date(ms).toISOString().replace(".000Z", "Z"));
  const sevClass = (s) => (SEVERITIES.includes(s) ? s : "info");
  const cssToken = (s) => String(s).replace(/[^a-z0-9_-]/gi, "_");

  function say(text, isError) {
    const m = $("message");
    m.textContent = text;
    m.className = isError ? "error" : "";
  }

  function sparkline(series, threshold) {
    const pts = (Array.isArray(series) ? series : [])
      .filter((p) => Array.isArray(p) && num(p[0]) !== null && num(p[1]) !== null)
      .slice(-500);
    if (pts.length < 2) return null;
    const W = 320, H = 48, PAD = 3;
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const t = num(threshold);
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (t !== null) { lo = Math.min(lo, t); hi = Math.max(hi, t); }
    if (hi === lo) { hi += 1; lo -= 1; }
    const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
    const sx = (x) => (PAD + ((x - x0) / (x1 - x0)) * (W - 2 * PAD)).toFixed(1);
    const sy = (y) => (H - PAD - ((y - lo) / (hi - lo)) * (H - 2 * PAD)).toFixed(1);
    const root = svg("svg", { class: "spark", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    const title = svg("title");
    title.textContent = `${pts.length} points, ${fmtNum(Math.min(...ys))} to ${fmtNum(Math.max(...ys))}`;
    root.appendChild(title);
    if (t !== null) root.appendChild(svg("line", { class: "threshold", x1: PAD, x2: W - PAD, y1: sy(t), y2: sy(t) }));
    root.appendChild(svg("polyline", { class: "line", points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ") }));
    return root;
  }

  function field(dl, name, value) {
    if (value === undefined || value === null || value === "") return;
    dl.append(el("dt", null, name), el("dd", null, value));
  }

  function evidenceBlock(a) {
    const ev = a.evidence && typeof a.evidence === "object" ? a.evidence : {};
    const details = el("details", "evidence");
    details.open = openEvidence.has(a.alert_id);
    details.addEventListener("toggle", () => {
      if (details.open) openEvidence.add(a.alert_id); else openEvidence.delete(a.alert_id);
    });
    details.appendChild(el("summary", null, "Evidence"));
    const dl = el("dl");
    if (Array.isArray(ev.values)) field(dl, "values", ev.values.slice(0, 20).map(fmtNum).join(", "));
    if (Array.isArray(ev.windows) && ev.windows.length) {
      const w = ev.windows;
      field(dl, "windows", `${w.length}: ${fmtTime(w[0] && w[0][0])} … ${fmtTime(w[w.length - 1] && w[w.length - 1][1])}`);
    }
    if (ev.score !== undefined && ev.score !== null) field(dl, "score", fmtNum(ev.score));
    field(dl, "model", ev.model_version);
    if (Array.isArray(ev.sensors) && ev.sensors.length) field(dl, "sensors", ev.sensors.slice(0, 50).map(String).join(", "));
    field(dl, "first reading", fmtTime(a.first_reading_ts_ms));
    field(dl, "latency", num(a.latency_ms) === null ? null : `${(a.latency_ms / 1000).toFixed(1)} s`);
    details.appendChild(dl);
    return details;
  }

  function card(a) {
    const sev = sevClass(a.severity);
    const art = el("article", `alert sev-${sev}`);
    art.dataset.alertId = String(a.alert_id);
    const head = el("div", "head");
    head.append(
      el("span", "badge", sev),
      el("span", `badge state-${cssToken(a.state)}`, a.state),
      el("span", "subject", a.subject_type === "zone" || !a.sensor_id ? `zone ${a.zone}` : a.sensor_id),
    );
    art.appendChild(head);
    art.appendChild(el("p", "msg", a.message));
    const dl = el("dl");
    field(dl, "rule", a.rule);
    field(dl, "kind", a.kind);
    field(dl, "metric", a.metric);
    field(dl, "value", a.value === undefined ? null : `${fmtNum(a.value)} (threshold ${fmtNum(a.threshold)})`);
    field(dl, "raised", fmtTime(a.raised_ts_ms));
    if (num(a.escalation_level) && a.escalation_level > 0) field(dl, "escalation", a.escalation_level);
    field(dl, "acknowledged by", a.acked_by);
    art.appendChild(dl);
    const spark = sparkline(a.evidence && a.evidence.series, a.threshold);
    if (spark) art.appendChild(spark);
    art.appendChild(evidenceBlock(a));
    const actions = el("div", "actions");
    const ack = el("button", "ack", a.state === "acknowledged" ? "Acknowledged" : "Acknowledge");
    ack.type = "button";
    ack.disabled = a.state === "acknowledged";
    ack.addEventListener("click", () => act("ack", a.alert_id, ack));
    const clear = el("button", "clear", "Clear");
    clear.type = "button";
    clear.addEventListener("click", () => act("clear", a.alert_id, clear));
    actions.append(ack, clear);
    art.appendChild(actions);
    return art;
  }

  function cardFor(a) {
    const cached = cards.get(a.alert_id);
    if (cached && cached.seq === a.seq) return cached.node;
    const node = card(a);
    cards.set(a.alert_id, { seq: a.seq, node });
    return node;
  }

  function render() {
    for (const id of [...cards.keys()]) if (!alerts.has(id)) cards.delete(id);
    const bySev = new Map(SEVERITIES.map((s) => [s, new Map()]));
    for (const a of alerts.values()) {
      const zones = bySev.get(sevClass(a.severity));
      const zone = String(a.zone ?? "unknown");
      if (!zones.has(zone)) zones.set(zone, []);
      zones.get(zone).push(a);
    }
    const sections = [];
    for (const sev of SEVERITIES) {
      const zones = bySev.get(sev);
      let n = 0;
      for (const list of zones.values()) n += list.length;
      $(`count-${sev}`).textContent = String(n);
      if (!n) continue;
      const section = el("section", `severity sev-${sev}`);
      section.appendChild(el("h2", `sev-${sev}`, `${sev} (${n})`));
      for (const zone of [...zones.keys()].sort()) {
        const list = zones.get(zone).sort((x, y) => (x.raised_ts_ms || 0) - (y.raised_ts_ms || 0));
        section.appendChild(el("h3", null, `zone ${zone}`));
        const box = el("div", "zone");
        box.dataset.zone = zone;
        for (const a of list) box.appendChild(cardFor(a));
        section.appendChild(box);
      }
      sections.push(section);
    }
    if (!sections.length) sections.push(el("p", "empty", "No active alerts."));
    $("board").replaceChildren(...sections);
  }

  function apply(rec) {
    if (!rec || typeof rec.alert_id !== "string") return;
    const cur = alerts.get(rec.alert_id);
    if (cur && Number(cur.seq) >= Number(rec.seq)) return;
    if (INACTIVE.has(rec.state)) alerts.delete(rec.alert_id);
    else alerts.set(rec.alert_id, rec);
  }

  async function act(action, alertId, button) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      say("Enter the board token first.", true);
      $("token").focus();
      return;
    }
    button.disabled = true;
    try {
      const resp = await fetch(`api/alerts/${encodeURIComponent(alertId)}/${action}`, {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ by: sessionStorage.getItem(OPERATOR_KEY) || "operator" }),
      });
      if (resp.status === 202) {
        say(`${action === "ack" ? "Acknowledgement" : "Clear"} of ${alertId} sent.`, false);
        return;
      }
      if (resp.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        showTokenState();
      }
      let detail = "";
      try { detail = (await resp.json()).error || ""; } catch (_) { /* not JSON */ }
      say(`${action} of ${alertId} refused (${resp.status}) ${detail}`, true);
    } catch (err) {
      say(`${action} of ${alertId} failed: ${err}`, true);
    } finally {
      button.disabled = false;
    }
  }

  function showTokenState() {
    $("token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set for this tab" : "no token";
  }

  function connect() {
    const es = new EventSource("api/stream");
    es.addEventListener("open", () => {
      $("conn").textContent = "live";
      $("conn").className = "conn conn-up";
    });
    es.addEventListener("error", () => {
      $("conn").textContent = "reconnecting…";
      $("conn").className = "conn conn-down";
    });
    es.addEventListener("snapshot", (ev) => {
      alerts.clear();
      for (const a of JSON.parse(ev.data).alerts || []) apply(a);
      render();
    });
    es.addEventListener("alert", (ev) => {
      apply(JSON.parse(ev.data));
      render();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("operator").value = sessionStorage.getItem(OPERATOR_KEY) || "";
    $("auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      const op = $("operator").value.trim();
      if (op) sessionStorage.setItem(OPERATOR_KEY, op); else sessionStorage.removeItem(OPERATOR_KEY);
      $("token").value = "";
      showTokenState();
      say(token ? "Token saved for this tab." : "Operator saved.", false);
    });
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
      say("Token forgotten.", false);
    });
    showTokenState();
    connect();
  });
})();
