// fnrt console: keeps the server-rendered page live (server-sent events) and draws charts (uPlot).
// The page works without this script; it only swaps in newer renderings of the same sections.
(function () {
  "use strict";
  var BASE = "/console";
  var MAX_POINTS = 300;
  var history = [];
  var plots = {};   // key -> uPlot
  var summaries = {}; // key -> element with the chart's text summary
  var COLORS = ["#1f6feb", "#d1242f", "#bf8700", "#8250df", "#1a7f37", "#57606a"];

  function $(id) { return document.getElementById(id); }

  function status(text) { var el = $("live-status"); if (el) { el.textContent = text; } }

  function chartWidth(key) { return key === "concurrency" ? 460 : 300; }

  // A chart with a heading, a text summary (for screen readers and tests) and a uPlot canvas.
  function ensurePlot(key, title, labels, dots) {
    if (plots[key]) { return plots[key]; }
    var box = document.createElement("figure");
    box.className = "chart";
    box.style.width = (chartWidth(key) + 8) + "px";
    box.setAttribute("data-chart", key);
    var cap = document.createElement("figcaption");
    cap.textContent = title;
    var canvas = document.createElement("div");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", title + ": " + labels.join(", ") + " over the last minutes");
    var summary = document.createElement("p");
    summary.className = "chart-summary";
    box.appendChild(cap); box.appendChild(canvas); box.appendChild(summary);
    $("charts").appendChild(box);
    var series = [{}];
    labels.forEach(function (label, i) {
      series.push({
        label: label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
        points: { show: !!dots, size: 4 },  // sparse series (durations, ages) read better as dots
      });
    });
    var empty = [[]].concat(labels.map(function () { return []; }));
    plots[key] = new uPlot({
      width: chartWidth(key), height: 140, series: series,
      scales: { x: { time: true } }, legend: { live: false },
      axes: [{}, { size: 50 }],
    }, empty, canvas);
    summaries[key] = summary;
    return plots[key];
  }

  function column(getter) { return history.map(getter); }

  function total(values) {
    return values.reduce(function (a, v) { return a + (v || 0); }, 0);
  }

  function last(values) {
    for (var i = values.length - 1; i >= 0; i--) { if (values[i] !== null && values[i] !== undefined) { return values[i]; } }
    return null;
  }

  function draw() {
    if (!history.length || typeof uPlot === "undefined") { return; }
    var ts = column(function (p) { return p.t; });
    var latest = history[history.length - 1];
    var inflight = column(function (p) { return p.in_flight; });
    var throttles = column(function (p) { return p.throttles; });
    ensurePlot("concurrency", "Concurrency: in flight and throttles per second", ["in flight", "throttles"])
      .setData([ts, inflight, throttles]);
    summaries.concurrency.textContent = "now " + (last(inflight) || 0) + " in flight; " +
      total(throttles) + " throttles in the window";
    Object.keys(latest.functions).sort().forEach(function (name) {
      function f(key) { return column(function (p) { var x = p.functions[name]; return x ? x[key] : null; }); }
      var inv = f("invocations"), err = f("errors"), thr = f("throttles"), tmo = f("timeouts");
      var counts = "counts:" + name;
      ensurePlot(counts, name + ": per second", ["invocations", "errors", "throttles", "timeouts"])
        .setData([ts, inv, err, thr, tmo]);
      summaries[counts].textContent = total(inv) + " invocations, " + total(err) + " errors, " +
        total(thr) + " throttles, " + total(tmo) + " timeouts in the window";
      summaries[counts].setAttribute("data-throttles", String(total(thr)));
      var p50 = f("p50_ms"), p99 = f("p99_ms");
      var dur = "duration:" + name;
      ensurePlot(dur, name + ": duration ms", ["p50", "p99"], true).setData([ts, p50, p99]);
      var l50 = last(p50), l99 = last(p99);
      summaries[dur].textContent = l50 === null ? "no invocations in the window" :
        "latest p50 " + l50.toFixed(1) + " ms, p99 " + l99.toFixed(1) + " ms";
    });
    Object.keys(latest.iterator_age_ms || {}).sort().forEach(function (uuid) {
      var age = column(function (p) { var a = p.iterator_age_ms || {}; return uuid in a ? a[uuid] : null; });
      var key = "age:" + uuid;
      ensurePlot(key, "Iterator age ms, mapping " + uuid.slice(0, 8), ["iterator age"], true).setData([ts, age]);
      var l = last(age);
      summaries[key].textContent = l === null ? "no batches read in the window" : "latest " + l.toFixed(1) + " ms";
      summaries[key].setAttribute("data-age", l === null ? "" : String(l));
    });
  }

  function addPoint(point) {
    if (!point) { return; }
    if (history.length && history[history.length - 1].t >= point.t) { return; }
    history.push(point);
    if (history.length > MAX_POINTS) { history.shift(); }
  }

  // A section holding the keyboard focus is not swapped (that would lose the focus): its
  // newest rendering waits until the focus leaves it.
  var pending = {};
  var waiting = {};

  function swap(html) {
    Object.keys(html).forEach(function (key) {
      var el = $("sec-" + key);
      if (!el) { return; }
      if (el.contains(document.activeElement)) {
        pending[key] = html[key];
        if (!waiting[key]) {
          waiting[key] = true;
          el.addEventListener("focusout", function later() {
            setTimeout(function () {
              if (el.contains(document.activeElement)) { return; }
              el.removeEventListener("focusout", later);
              waiting[key] = false;
              if (key in pending) { el.innerHTML = pending[key]; delete pending[key]; }
            }, 0);
          });
        }
        return;
      }
      delete pending[key];
      if (el.innerHTML !== html[key]) { el.innerHTML = html[key]; }
    });
  }

  function connect() {
    var params = new URLSearchParams(window.location.search);
    var query = new URLSearchParams();
    ["function", "outcome"].forEach(function (k) { if (params.get(k)) { query.set(k, params.get(k)); } });
    var source = new EventSource(BASE + "/api/events" + (query.toString() ? "?" + query : ""));
    source.addEventListener("tick", function (event) {
      var message = JSON.parse(event.data);
      window.fnrtConsole.ticks += 1;
      swap(message.html);
      addPoint(message.point);
      draw();
      status("Live: updated " + new Date().toLocaleTimeString());
    });
    source.onerror = function () { status("Live updates interrupted; reconnecting ..."); };
  }

  function loadHistory() {
    return fetch(BASE + "/api/series").then(function (r) { return r.json(); }).then(function (body) {
      body.points.forEach(addPoint);
      draw();
    });
  }

  function text(tag, value, id) {
    var el = document.createElement(tag);
    el.textContent = value;
    if (id) { el.id = id; }
    return el;
  }

  function showInvoke(result, ok) {
    var box = $("invoke-result");
    box.textContent = "";
    if (!ok || result.error) {
      var p = text("p", result.error || "the invoke failed");
      p.className = "outcome-error";
      box.appendChild(p);
      return;
    }
    box.appendChild(text("p", "Request id " + result.request_id + ", status " + result.status_code +
      (result.function_error ? ", function error " + result.function_error : "")));
    if (result.result !== null) {
      box.appendChild(text("h3", "Result"));
      box.appendChild(text("pre", result.result, "invoke-output"));
    }
    if (result.log) {
      box.appendChild(text("h3", "Log tail"));
      box.appendChild(text("pre", result.log, "invoke-log"));
    }
  }

  function wireInvoke() {
    var form = $("invoke-form");
    if (!form) { return; }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var payload;
      try {
        payload = JSON.parse(form.payload.value || "{}");
      } catch (e) {
        showInvoke({ error: "The payload is not JSON: " + e.message }, false);
        form.payload.focus();
        return;
      }
      var type = form.querySelector("input[name=invocation_type]:checked").value;
      var button = $("invoke-submit");
      button.disabled = true;
      $("invoke-result").textContent = "Invoking ...";
      fetch(BASE + "/api/invoke", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ "function": form["function"].value, payload: payload, invocation_type: type }),
      }).then(function (r) {
        return r.json().then(function (body) { showInvoke(body, r.ok); });
      }).catch(function (e) {
        showInvoke({ error: "The invoke failed: " + e }, false);
      }).finally(function () { button.disabled = false; });
    });
  }

  function wireFilter() {
    var form = $("recent-filter");
    if (!form) { return; }
    form.querySelectorAll("select").forEach(function (select) {
      select.addEventListener("change", function () { form.submit(); });
    });
  }

  window.fnrtConsole = { plots: plots, history: history, ticks: 0 };
  wireInvoke();
  wireFilter();
  loadHistory().finally(connect);
})();
