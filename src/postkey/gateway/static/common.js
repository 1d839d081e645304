// postkey dashboard, shared by its scripts: small DOM and formatting helpers, the page's
// settings (from <body data-...>), and the header's live badge. Loaded first.
// Every value from the server is put in the page as text (textContent), never as markup:
// URLs, headers and bodies come from the outside world.
(function () {
  "use strict";

  const body = document.body;
  const intFormat = new Intl.NumberFormat("en-US");

  function $(id) {
    return document.getElementById(id);
  }

  // An element with text content and attributes; children may be nodes or strings.
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "className") node.className = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function fmtInt(n) {
    return typeof n === "number" && isFinite(n) ? intFormat.format(n) : "–";
  }

  function fmtMs(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "–";
    if (Number.isInteger(ms)) return intFormat.format(ms);
    if (ms < 10) return ms.toFixed(1);
    return intFormat.format(Math.round(ms));
  }

  function fmtClock(unixS) {
    if (typeof unixS !== "number" || !isFinite(unixS)) return "–";
    const d = new Date(unixS * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDateTime(unixS) {
    if (typeof unixS !== "number" || !isFinite(unixS)) return "–";
    return new Date(unixS * 1000).toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function fmtDuration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "";
    s = Math.floor(s);
    const d = Math.floor(s / 86400);
    const hh = Math.floor((s % 86400) / 3600);
    const mm = Math.floor((s % 3600) / 60);
    const ss = s % 60;
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${mm}m`;
    if (mm) return `${mm}m ${ss}s`;
    return `${ss}s`;
  }

  function statusClass(status) {
    return typeof status === "number" ? `s-${Math.floor(status / 100)}xx` : "";
  }

  // A CSS colour (#rrggbb) at some opacity, for a chart's fill.
  function translucent(color, alpha) {
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
    if (!m) return color;
    return `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${alpha})`;
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // The message of an error answer, whatever shape the gateway gives it.
  function errorText(payload) {
    if (!payload || typeof payload !== "object") return "";
    const e = payload.error;
    if (e && typeof e === "object" && typeof e.message === "string") return e.message;
    for (const v of [payload.message, payload.detail, e]) {
      if (typeof v === "string") return v;
    }
    return "";
  }

  async function readJson(resp) {
    try {
      return await resp.json();
    } catch (_) {
      return null;
    }
  }

  // The header's badge: live, or why not.
  function setLive(state, text) {
    const node = $("live");
    if (node.dataset.state === state && node.textContent === text) return;
    node.dataset.state = state;
    node.replaceChildren(text);
  }

  function signedOut() {
    const node = $("live");
    node.dataset.state = "error";
    node.replaceChildren("signed out · ", h("a", { href: "/", text: "sign in" }));
  }

  window.postkeyDashboard = {
    STATS_URL: body.dataset.statsUrl,
    REQUESTS_URL: body.dataset.requestsUrl,
    POLL_MS: Math.max(100, Number(body.dataset.pollMs) || 1000),
    intFormat,
    $,
    h,
    fmtInt,
    fmtMs,
    fmtClock,
    fmtDateTime,
    fmtDuration,
    statusClass,
    translucent,
    cssVar,
    errorText,
    readJson,
    setLive,
    signedOut,
  };
})();
