// postkey dashboard: polls the gateway's stats endpoint and renders the counters, charts
// and tables. Loaded after common.js and lookup.js.
(function () {
  "use strict";

  const {
    STATS_URL,
    POLL_MS,
    $,
    h,
    fmtInt,
    fmtMs,
    fmtClock,
    fmtDuration,
    statusClass,
    translucent,
    cssVar,
    errorText,
    readJson,
    setLive,
    signedOut,
    startLookup,
  } = window.postkeyDashboard;
  const STATUS_CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"];
  const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6];

  // ---- counters ------------------------------------------------------------------------

  // data-value holds the number shown (for tests and tools); it changes with the text.
  function setCounter(name, value) {
    const node = $("c-" + name);
    if (!node || typeof value !== "number" || !isFinite(value)) return;
    const text = fmtInt(value);
    if (node.textContent === text) return;
    const shownBefore = node.dataset.value !== undefined;
    node.textContent = text;
    node.title = text;
    node.classList.toggle("long", text.length > 7); // 1,000,000 and up: a smaller font
    node.dataset.value = String(value);
    if (shownBefore) flash(node.parentElement);
  }

  function flash(node) {
    node.classList.add("bumped");
    clearTimeout(node._bumpTimer);
    node._bumpTimer = setTimeout(() => node.classList.remove("bumped"), 600);
  }

  function renderCounters(c) {
    setCounter("submitted", c.submitted);
    setCounter("in_flight", c.in_flight);
    for (const cls of STATUS_CLASSES) setCounter(cls, (c.done || {})[cls] || 0);
    const failed = c.failed || {};
    const kinds = Object.entries(failed).filter(([, n]) => n > 0);
    setCounter(
      "failed",
      kinds.reduce((sum, [, n]) => sum + n, 0),
    );
    setCounter("cancelled", c.cancelled || 0);
    kinds.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const list = $("failed-kinds");
    if (!kinds.length) {
      list.replaceChildren(h("li", { className: "empty", text: "none" }));
    } else {
      list.replaceChildren(
        ...kinds.map(([kind, n]) =>
          h("li", { "data-kind": kind }, kind, h("b", { text: fmtInt(n) })),
        ),
      );
    }
  }

  // ---- charts --------------------------------------------------------------------------

  const charts = {};

  // series: [label, CSS colour variable, extra uPlot series options]
  function makeChart(id, series, yLabel, yIncrs) {
    const box = $(id);
    if (typeof uPlot !== "function") {
      box.replaceChildren(h("p", { className: "muted", text: "chart library not loaded" }));
      return null;
    }
    const axisColor = cssVar("--muted");
    const gridColor = cssVar("--line");
    const axis = (extra) =>
      Object.assign(
        {
          stroke: axisColor,
          grid: { stroke: gridColor, width: 1 },
          ticks: { stroke: gridColor, width: 1 },
        },
        extra,
      );
    const opts = {
      width: Math.max(200, box.clientWidth),
      height: 200,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      legend: { live: false },
      axes: [
        axis({ space: 70, values: (u, splits) => splits.map((v) => fmtClock(v)) }),
        axis({
          size: 52,
          values: (u, splits) => splits.map((v) => fmtMs(v)),
          ...(yIncrs ? { incrs: yIncrs } : {}),
        }),
      ],
      series: [
        {},
        ...series.map(([label, color, extra]) =>
          Object.assign(
            {
              label,
              stroke: cssVar(color),
              width: 2,
              spanGaps: false,
              value: (u, v) =>
                v === null || v === undefined ? "–" : fmtMs(v) + (yLabel ? " " + yLabel : ""),
            },
            typeof extra === "function" ? extra(cssVar(color)) : {},
          ),
        ),
      ],
    };
    const chart = new uPlot(opts, [[], ...series.map(() => [])], box);
    if (typeof ResizeObserver === "function") {
      let last = box.clientWidth;
      new ResizeObserver(() => {
        const width = Math.max(200, box.clientWidth);
        if (width !== last) {
          last = width;
          chart.setSize({ width, height: 200 });
        }
      }).observe(box);
    }
    return chart;
  }

  function renderCharts(series) {
    if (!Array.isArray(series)) return;
    const t = series.map((p) => p.t);
    if (charts.throughput) {
      charts.throughput.setData([
        t,
        series.map((p) => p.submitted),
        series.map((p) => p.completed),
      ]);
    }
    if (charts.latency) {
      charts.latency.setData([t, series.map((p) => p.p50_ms), series.map((p) => p.p99_ms)]);
    }
  }

  // ---- tables --------------------------------------------------------------------------

  function emptyRow(columns, text) {
    return h("tr", { className: "empty" }, h("td", { colspan: columns, text }));
  }

  function renderHosts(hosts) {
    const tbody = $("hosts").tBodies[0];
    if (!Array.isArray(hosts) || !hosts.length) {
      tbody.replaceChildren(emptyRow(5, "no requests yet"));
      return;
    }
    tbody.replaceChildren(
      ...hosts.map((row) =>
        h(
          "tr",
          {},
          h("td", { className: "mono", title: row.host, text: row.host }),
          h("td", { className: "num", text: fmtInt(row.count) }),
          h("td", { className: "num", text: fmtMs(row.p50_ms) }),
          h("td", { className: "num", text: fmtMs(row.p99_ms) }),
          h("td", { className: "num", text: fmtInt(row.errors) }),
        ),
      ),
    );
  }

  function keyLink(key) {
    return h("a", {
      className: "key-link mono",
      href: "#key=" + encodeURIComponent(key),
      "data-key": key,
      title: key,
      text: key,
    });
  }

  function recentRow(row) {
    const outcome =
      row.status !== null && row.status !== undefined
        ? h("span", { className: "badge " + statusClass(row.status), text: row.status })
        : row.error_kind
          ? h("span", { className: "badge st-failed", text: row.error_kind })
          : "–";
    return h(
      "tr",
      { "data-key": row.key },
      h("td", { text: fmtClock(row.submitted_at) }),
      h("td", {}, keyLink(row.key)),
      h("td", { text: row.method }),
      h("td", { className: "mono", title: row.url, text: row.url }),
      h("td", {}, h("span", { className: "badge st-" + row.state, text: row.state })),
      h("td", { className: "num" }, outcome),
      h("td", { className: "num", text: fmtMs(row.elapsed_ms) }),
    );
  }

  // Rows whose data did not change are kept (moved, not rebuilt), so a click or a text
  // selection in the table survives the next poll.
  const recentRows = new Map(); // key -> {signature, tr}

  function renderRecent(recent) {
    const tbody = $("recent").tBodies[0];
    if (!Array.isArray(recent) || !recent.length) {
      recentRows.clear();
      tbody.replaceChildren(emptyRow(7, "no requests yet"));
      return;
    }
    const rows = recent.map((row) => {
      const signature = JSON.stringify(row);
      const known = recentRows.get(row.key);
      if (known && known.signature === signature) return [row.key, known];
      return [row.key, { signature, tr: recentRow(row) }];
    });
    recentRows.clear();
    for (const [key, entry] of rows) recentRows.set(key, entry);
    const wanted = rows.map(([, entry]) => entry.tr);
    const current = Array.from(tbody.rows);
    if (wanted.length !== current.length || wanted.some((tr, i) => tr !== current[i])) {
      tbody.replaceChildren(...wanted);
    }
  }

  // ---- polling -------------------------------------------------------------------------

  let pollTimer = null;
  let polling = false;
  let stopped = false;

  function render(stats) {
    renderCounters(stats.counters || {});
    renderCharts(stats.series);
    renderHosts(stats.slowest_hosts);
    renderRecent(stats.recent);
    $("uptime").textContent = `up ${fmtDuration(stats.uptime_s)} · updated ${fmtClock(stats.now)}`;
  }

  async function poll() {
    if (polling || stopped) return;
    polling = true;
    clearTimeout(pollTimer);
    try {
      const resp = await fetch(STATS_URL, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (resp.status === 401) {
        stopped = true;
        signedOut();
        return;
      }
      if (!resp.ok) {
        const payload = await readJson(resp);
        throw new Error(errorText(payload) || `HTTP ${resp.status}`);
      }
      render(await resp.json());
      setLive("live", "live");
    } catch (err) {
      setLive("stale", "no data: " + (err && err.message ? err.message : String(err)));
    } finally {
      polling = false;
      schedule();
    }
  }

  function schedule() {
    clearTimeout(pollTimer);
    if (!stopped && !document.hidden) pollTimer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });

  // A click on a key in the recent requests looks it up.
  $("recent").addEventListener("click", (event) => {
    const link = event.target.closest("a.key-link");
    if (!link) return;
    event.preventDefault();
    startLookup(link.dataset.key);
    $("lookup-result").scrollIntoView({ block: "nearest" });
  });

  // ---- start ---------------------------------------------------------------------------

  charts.throughput = makeChart(
    "chart-throughput",
    [
      // Submitted as a shaded area under the completed line, so neither hides the other.
      ["submitted/s", "--accent", (c) => ({ fill: translucent(c, 0.18), width: 1 })],
      ["completed/s", "--ok"],
    ],
    "",
    WHOLE_STEPS, // requests come whole: no 2.5 on the axis
  );
  charts.latency = makeChart(
    "chart-latency",
    [
      // A second with completions between two without is a lone point: draw points.
      ["p50", "--ok", () => ({ points: { show: true, size: 4 } })],
      ["p99", "--warn", () => ({ points: { show: true, size: 4 } })],
    ],
    "ms",
  );
  poll();
})();
