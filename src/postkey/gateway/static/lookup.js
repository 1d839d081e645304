// postkey dashboard: the key lookup. A result's status, headers, timings and body preview,
// from GET <requests-url>/<key>; a key that is still pending or running is read again each
// poll interval until it ends. Exposes postkeyDashboard.startLookup.
(function () {
  "use strict";

  const {
    REQUESTS_URL,
    POLL_MS,
    intFormat,
    $,
    h,
    fmtMs,
    fmtDateTime,
    statusClass,
    errorText,
    readJson,
    signedOut,
  } = window.postkeyDashboard;
  const BODY_PREVIEW_CHARS = 2048;
  const BINARY_PREVIEW_BYTES = 512;
  const JSON_FORMAT_MAX_CHARS = 1 << 20;
  const TIMINGS = [
    ["dns_ms", "DNS"],
    ["connect_ms", "Connect"],
    ["tls_ms", "TLS"],
    ["first_byte_ms", "First byte"],
    ["total_ms", "Total"],
  ];

  let lookupKey = null;
  let lookupTimer = null;

  function lookupPanel() {
    const node = $("lookup-result");
    node.hidden = false;
    return node;
  }

  function facts(pairs) {
    const dl = h("dl", { className: "facts" });
    for (const [label, value] of pairs) {
      if (value === null || value === undefined || value === "") continue;
      dl.append(
        h("dt", { text: label }),
        h("dd", {}, value instanceof Node ? value : String(value)),
      );
    }
    return dl;
  }

  function timingsView(timings) {
    const total = Number(timings.total_ms) || 0;
    const grid = h("div", { className: "timings" });
    let previous = 0;
    for (const [field, label] of TIMINGS) {
      const value = timings[field];
      const bar = h("div", { className: "timing-bar" });
      // A phase that did not happen (no TLS on http://, no lookup for an address) reads 0.
      if (typeof value === "number" && isFinite(value) && value > 0 && total > 0) {
        const span = h("span");
        const start = field === "total_ms" ? 0 : Math.min(previous, value);
        span.style.left = `${(100 * start) / total}%`;
        span.style.width = `${Math.max(0.5, (100 * (value - start)) / total)}%`;
        bar.append(span);
        if (field !== "total_ms" && value > previous) previous = value;
      }
      grid.append(
        h("span", { className: "muted", text: label }),
        bar,
        h("span", { className: "num", text: fmtMs(value) + " ms" }),
      );
    }
    return grid;
  }

  function headerPairs(headers) {
    if (Array.isArray(headers)) return headers.filter((p) => Array.isArray(p) && p.length >= 2);
    if (headers && typeof headers === "object") return Object.entries(headers);
    return [];
  }

  function headersView(headers) {
    const pairs = headerPairs(headers);
    if (!pairs.length) return h("p", { className: "muted", text: "no headers" });
    const tbody = h("tbody");
    for (const [name, value] of pairs) {
      tbody.append(h("tr", {}, h("td", { text: name }), h("td", { text: value })));
    }
    return h("div", { className: "table-wrap" }, h("table", { className: "headers-table" }, tbody));
  }

  function hexDump(bytes) {
    const lines = [];
    for (let i = 0; i < bytes.length; i += 16) {
      const chunk = bytes.slice(i, i + 16);
      const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
      const ascii = Array.from(chunk, (b) =>
        b >= 32 && b < 127 ? String.fromCharCode(b) : ".",
      ).join("");
      lines.push(`${i.toString(16).padStart(6, "0")}  ${hex.padEnd(47)}  ${ascii}`);
    }
    return lines.join("\n");
  }

  function headerValue(headers, name) {
    const wanted = name.toLowerCase();
    const pair = headerPairs(headers).find(([n]) => String(n).toLowerCase() === wanted);
    return pair ? String(pair[1]) : "";
  }

  // A JSON body laid out with indentation, or null (not JSON, or too big to be worth it).
  function formattedJson(result) {
    if (!/\bjson\b/i.test(headerValue(result.headers, "content-type"))) return null;
    if (result.body.length > JSON_FORMAT_MAX_CHARS) return null;
    try {
      return JSON.stringify(JSON.parse(result.body), null, 2);
    } catch (_) {
      return null;
    }
  }

  function bodyView(result) {
    if (typeof result.body === "string") {
      const size = `${intFormat.format(result.body.length)} characters`;
      const pretty = formattedJson(result);
      const text = pretty === null ? result.body : pretty;
      const shown =
        text.length > BODY_PREVIEW_CHARS ? `the first ${intFormat.format(BODY_PREVIEW_CHARS)}` : "";
      const note = [size, pretty === null ? "" : "JSON, laid out", shown]
        .filter(Boolean)
        .join("; ");
      return [
        h("p", { className: "muted", text: note }),
        h("pre", {
          className: "body-preview",
          id: "lookup-body",
          text: text.slice(0, BODY_PREVIEW_CHARS),
        }),
      ];
    }
    if (typeof result.body_b64 === "string") {
      try {
        const raw = atob(result.body_b64);
        const bytes = Uint8Array.from(raw.slice(0, BINARY_PREVIEW_BYTES), (c) => c.charCodeAt(0));
        const size = `binary, ${intFormat.format(raw.length)} bytes`;
        const note = `${size}; the first ${intFormat.format(bytes.length)} in hex`;
        return [
          h("p", { className: "muted", text: note }),
          h("pre", { className: "body-preview", id: "lookup-body", text: hexDump(bytes) }),
        ];
      } catch (_) {
        return [h("p", { className: "muted", text: "binary body (not valid base64)" })];
      }
    }
    return [h("p", { className: "muted", text: "no body" })];
  }

  function showResult(key, httpStatus, result) {
    const state = result.state || (httpStatus === 202 ? "pending" : "unknown");
    const summary = h("div", { className: "lookup-summary" });
    if (typeof result.status === "number") {
      summary.append(
        h("span", {
          className: "status-code " + statusClass(result.status),
          id: "lookup-status",
          text: result.status,
        }),
        h("span", { text: result.reason || "" }),
      );
    }
    summary.append(h("span", { className: "badge st-" + state, id: "lookup-state", text: state }));
    if (result.error_kind)
      summary.append(h("span", { className: "badge st-failed", text: result.error_kind }));
    const parts = [
      summary,
      facts([
        ["Key", h("span", { className: "mono", text: key })],
        ["URL", result.url ? h("span", { className: "mono", text: result.url }) : null],
        ["HTTP", result.http_version],
        [
          "Elapsed",
          typeof result.elapsed_ms === "number" ? fmtMs(result.elapsed_ms) + " ms" : null,
        ],
        ["Attempts", result.attempts],
        ["Submitted", result.submitted_at ? fmtDateTime(result.submitted_at) : null],
        ["Finished", result.finished_at ? fmtDateTime(result.finished_at) : null],
        [
          "Error",
          result.error ? h("span", { className: "lookup-error", text: result.error }) : null,
        ],
      ]),
    ];
    if (result.timings && typeof result.timings === "object") {
      parts.push(h("h3", { text: "Timings" }), timingsView(result.timings));
    }
    if (state === "done") {
      parts.push(h("h3", { text: "Headers" }), headersView(result.headers));
      parts.push(h("h3", { text: "Body" }), ...bodyView(result));
    }
    lookupPanel().replaceChildren(...parts);
    clearTimeout(lookupTimer);
    if (state === "pending" || state === "running") {
      lookupTimer = setTimeout(() => {
        if (lookupKey === key) lookup(key, { quiet: true });
      }, POLL_MS);
    }
  }

  function showLookupError(key, message) {
    lookupPanel().replaceChildren(
      h(
        "div",
        { className: "lookup-summary" },
        h("span", { className: "badge", id: "lookup-state", text: "error" }),
      ),
      h("p", { className: "lookup-error", id: "lookup-message", text: message }),
      facts([["Key", h("span", { className: "mono", text: key })]]),
    );
  }

  async function lookup(key, options) {
    key = key.trim();
    if (!key) return;
    lookupKey = key;
    clearTimeout(lookupTimer);
    if (!(options && options.quiet)) {
      lookupPanel().replaceChildren(h("p", { className: "muted", text: "looking up…" }));
    }
    let resp;
    try {
      resp = await fetch(`${REQUESTS_URL}/${encodeURIComponent(key)}`, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      if (lookupKey === key) showLookupError(key, "the gateway did not answer: " + err.message);
      return;
    }
    const payload = await readJson(resp);
    if (lookupKey !== key) return; // a newer lookup started meanwhile
    if (resp.status === 200 || resp.status === 202) {
      showResult(key, resp.status, payload || {});
    } else if (resp.status === 401) {
      signedOut();
      showLookupError(key, "signed out: sign in again");
    } else if (resp.status === 404) {
      showLookupError(
        key,
        "unknown key: never submitted here (or by another tenant), or long gone",
      );
    } else if (resp.status === 410) {
      showLookupError(
        key,
        errorText(payload) || "expired: there was a result, and its time to live passed",
      );
    } else {
      showLookupError(key, errorText(payload) || `the gateway answered HTTP ${resp.status}`);
    }
  }

  function startLookup(key) {
    $("lookup-key").value = key;
    history.replaceState(null, "", "#key=" + encodeURIComponent(key));
    lookup(key);
  }

  function keyFromHash() {
    const match = /^#key=(.+)$/.exec(location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch (_) {
      return null;
    }
  }

  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startLookup($("lookup-key").value);
  });

  window.addEventListener("hashchange", () => {
    const key = keyFromHash();
    if (key && key !== lookupKey) startLookup(key);
  });

  window.postkeyDashboard.startLookup = startLookup;
  const initialKey = keyFromHash();
  if (initialKey) startLookup(initialKey);
})();
