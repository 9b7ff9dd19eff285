// The job page's charts and timeline, drawn with uPlot on one shared time axis. The text of the
// page (diagnosis, tables, logs) is server-rendered and needs none of this.
(function () {
  "use strict";
  var dataEl = document.getElementById("page-data");
  if (!dataEl || typeof uPlot === "undefined") { return; }
  var page = JSON.parse(dataEl.textContent);
  var axis = page.axis;
  var moments = page.moments || [];
  var fault = page.fault;
  // The job's own step telemetry: the hang (its time, the ranks that stopped first) and slow ranks.
  var training = page.training || null;
  var hang = training && training.hang;
  var css = getComputedStyle(document.documentElement);
  function v(name) { return css.getPropertyValue(name).trim(); }
  var FG = v("--fg"), MUTED = v("--muted"), GRID = v("--grid"), BAD = v("--bad");
  // Same width for every chart's value axis, so that one instant is at the same x on all of them.
  var YAXIS = 72;
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
                 "#86bcb6", "#8cd17d", "#499894", "#d4a6c8", "#79706e", "#a0cbe8", "#ffbe7d", "#bab0ac"];
  var MARKED = { fault: true, failure: true, cause: true, hang: true };
  var charts = [];
  var sync = uPlot.sync("job");

  function utc(ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }

  function fmt(unit, value) {
    if (value == null) { return "—"; }
    var abs = Math.abs(value);
    if (unit === "bytes" || unit === "bytes_per_second") {
      var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
      while (abs >= 1024 && i < units.length - 1) { abs /= 1024; value /= 1024; i++; }
      return value.toFixed(i ? 1 : 0) + " " + units[i] + (unit === "bytes_per_second" ? "/s" : "");
    }
    if (unit === "percent") { return value.toFixed(0) + " %"; }
    if (unit === "ratio") { return (value * 100).toFixed(0) + " %"; }
    if (unit === "watts") { return value.toFixed(0) + " W"; }
    if (unit === "celsius") { return value.toFixed(0) + " °C"; }
    if (unit === "seconds") { return abs < 1 ? (value * 1e3).toFixed(0) + " ms" : value.toFixed(abs >= 100 ? 0 : 2) + " s"; }
    return abs >= 100 ? value.toFixed(0) : value.toFixed(2);
  }

  // Axis labels in UTC, 24-hour, as the page's text: seconds on short spans, dates on long ones.
  function timeLabels(u, splits) {
    var span = axis[1] - axis[0];
    return splits.map(function (ts) {
      var iso = new Date(ts * 1e3).toISOString();
      if (span > 2 * 86400) { return iso.slice(5, 10) + " " + iso.slice(11, 16); }
      return span < 900 ? iso.slice(11, 19) : iso.slice(11, 16);
    });
  }

  function width(el) { return Math.max(300, el.clientWidth || 600); }

  // Vertical lines at the timeline's moments that matter on a chart: the fault, causes, the failure.
  function markers(u) {
    var ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    ctx.save();
    moments.forEach(function (m) {
      if (!MARKED[m.kind]) { return; }
      var x = Math.round(u.valToPos(m.t, "x", true));
      ctx.strokeStyle = m.kind === "cause" ? MUTED : BAD;
      ctx.lineWidth = (m.kind === "fault" ? 3 : 2) * devicePixelRatio;
      ctx.setLineDash(m.kind === "failure" ? [6 * devicePixelRatio, 4 * devicePixelRatio] : []);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    });
    ctx.restore();
  }

  function baseOpts(el, height) {
    return {
      width: width(el), height: height, tzDate: utc,
      scales: { x: { time: true, range: function () { return [axis[0], axis[1]]; } } },
      cursor: { sync: { key: sync.key } },
      axes: [
        { stroke: FG, grid: { stroke: GRID }, ticks: { stroke: GRID }, values: timeLabels, space: 70 },
        { stroke: FG, grid: { stroke: GRID }, ticks: { stroke: GRID }, size: YAXIS },
      ],
    };
  }

  function drawTimeline() {
    var el = document.querySelector(".timeline-plot");
    if (!el) { return; }
    var opts = baseOpts(el, 190);
    opts.legend = { show: false };
    opts.scales.y = { range: [0, 1] };
    opts.axes[1] = { size: YAXIS, values: function () { return []; }, grid: { show: false }, ticks: { show: false } };
    opts.series = [{}, { label: "moments", stroke: "transparent", points: { show: false } }];
    opts.hooks = { draw: [function (u) {
      var ctx = u.ctx, dpr = devicePixelRatio, top = u.bbox.top, h = u.bbox.height;
      var right = u.bbox.left + u.bbox.width;
      ctx.save();
      ctx.font = (11 * dpr) + "px system-ui, sans-serif";
      ctx.textBaseline = "top";
      ctx.textAlign = "left";  // uPlot leaves the axes' alignment on the context
      // A tick for every moment; one label for a burst of NCCL timeouts (every rank times out
      // within seconds of the others), so that the labels stay readable.
      var labels = [];
      moments.forEach(function (m) {
        var x = u.valToPos(m.t, "x", true);
        var color = (m.kind === "fault" || m.kind === "failure" || m.kind === "hang") ? BAD
          : (m.kind === "cause" ? MUTED : FG);
        ctx.strokeStyle = color; ctx.lineWidth = (m.kind === "fault" ? 3 : 1.5) * dpr;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
        var last = labels[labels.length - 1];
        if (m.kind === "nccl" && last && last.kind === "nccl" && x - last.x1 < 40 * dpr) {
          last.count++; last.x1 = x;
          last.text = "NCCL timeouts, " + last.count + " ranks";
          return;
        }
        labels.push({ kind: m.kind, x: x, x1: x, count: 1, color: color, text: m.label });
      });
      var lanes = [];
      labels.forEach(function (l) {
        var text = l.text.length > 52 ? l.text.slice(0, 51) + "…" : l.text;
        var w = ctx.measureText(text).width;
        var tx = l.x + 3 * dpr + w > right ? l.x - 3 * dpr - w : l.x + 3 * dpr;
        // The first lane where this label overlaps none of the labels already in it.
        var lane = 0, gap = 4 * dpr;
        while (lanes[lane] && lanes[lane].some(function (r) { return tx < r[1] + gap && tx + w > r[0] - gap; })) {
          lane++;
        }
        (lanes[lane] = lanes[lane] || []).push([tx, tx + w]);
        ctx.fillStyle = l.color;
        ctx.fillText(text, tx, top + 2 * dpr + (lane % 11) * 14 * dpr);
      });
      ctx.restore();
    }] };
    var chart = new uPlot(opts, [[axis[0], axis[1]], [null, null]], el);
    el.dataset.rendered = "true";
    el.dataset.moments = String(moments.length);
    charts.push({ el: el, chart: chart });
  }

  function aligned(metric) {
    var xs = {};
    metric.series.forEach(function (s) { s.points.forEach(function (p) { xs[p[0]] = true; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    x.forEach(function (t, i) { index[t] = i; });
    var data = [x];
    metric.series.forEach(function (s) {
      var y = new Array(x.length).fill(null);
      s.points.forEach(function (p) { y[index[p[0]]] = p[1]; });
      data.push(y);
    });
    return data;
  }

  function isFaulty(labels) {
    return !!fault && labels.host === fault.host && fault.gpu !== null && String(fault.gpu) === labels.gpu;
  }

  function rankIn(list, labels) {
    return !!list && labels.rank !== undefined && list.map(String).indexOf(labels.rank) >= 0;
  }

  function seriesLabel(labels) {
    if (labels.rank !== undefined) { return "rank " + labels.rank + " (" + labels.host + ")"; }
    return labels.gpu !== undefined ? labels.host + " GPU " + labels.gpu : labels.host;
  }

  function drawChart(fig, metric) {
    var el = fig.querySelector(".plot");
    var status = fig.querySelector(".chart-status");
    if (!metric || metric.series.length === 0) {
      status.textContent = fig.dataset.metric === "gpu_tensor_active"
        ? "No data: tensor activity needs NVML GPM (Hopper and newer GPUs)."
        : (fig.dataset.scope === "rank" ? "No step times in the charts' window." : "No data for this job.");
      fig.dataset.rendered = "empty";
      return;
    }
    var unit = fig.dataset.unit;
    var opts = baseOpts(el, 240);
    opts.axes[1].values = function (u, ticks) { return ticks.map(function (t) { return fmt(unit, t); }); };
    opts.series = [{ value: function (u, ts) { return ts == null ? "" : new Date(ts * 1e3).toISOString().slice(11, 19) + " UTC"; } }];
    var faulty = 0, stopped = 0, slow = 0;
    metric.series.forEach(function (s, i) {
      // A fault's GPU, or a rank that stopped first in a hang: red; a slow rank: thicker.
      var hit = isFaulty(s.labels) || rankIn(hang && hang.ranks, s.labels);
      var slowRank = !hit && rankIn(training && training.slow, s.labels);
      if (hit) { faulty++; }
      if (rankIn(hang && hang.ranks, s.labels)) { stopped++; }
      if (slowRank) { slow++; }
      opts.series.push({
        label: seriesLabel(s.labels),
        stroke: hit ? BAD : PALETTE[i % PALETTE.length],
        width: hit ? 3 : (slowRank ? 2.5 : 1.25),
        spanGaps: false,
        points: { show: false },
        value: function (u, val) { return fmt(unit, val); },
      });
    });
    opts.hooks = { draw: [markers] };
    var data = aligned(metric);
    var chart = new uPlot(opts, data, el);
    fig.dataset.rendered = "true";
    fig.dataset.series = String(metric.series.length);
    fig.dataset.points = String(data[0].length);
    fig.dataset.faultSeries = String(faulty);
    fig.dataset.stoppedSeries = String(stopped);
    fig.dataset.slowSeries = String(slow);
    fig.dataset.markers = String(moments.filter(function (m) { return MARKED[m.kind]; }).length);
    charts.push({ el: el, chart: chart });
  }

  drawTimeline();
  var figures = Array.prototype.slice.call(document.querySelectorAll("figure.chart"));
  figures.forEach(function (fig) { fig.querySelector(".chart-status").textContent = "Loading…"; });
  fetch(page.chartsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    })
    .then(function (body) {
      var byName = {};
      body.metrics.forEach(function (m) { byName[m.name] = m; });
      figures.forEach(function (fig) {
        fig.querySelector(".chart-status").textContent = "";
        drawChart(fig, byName[fig.dataset.metric]);
      });
      document.body.dataset.charts = "ready";
    })
    .catch(function (err) {
      figures.forEach(function (fig) {
        fig.querySelector(".chart-status").textContent = "Could not load the chart data (" + err.message + ").";
      });
      document.body.dataset.charts = "failed";
    });

  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      charts.forEach(function (c) { c.chart.setSize({ width: width(c.el), height: c.chart.height }); });
    }, 150);
  });
  window.jobsightCharts = charts;
}());
