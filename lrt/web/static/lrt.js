// lrt dashboard: draws the rate plot (uPlot) from the data-plot attribute of
// .plot elements, on load and after every htmx refresh.  No inline scripts
// anywhere (the Content-Security-Policy forbids them).
(function () {
  "use strict";
  var plots = new WeakMap();

  function draw(el) {
    var d;
    try { d = JSON.parse(el.getAttribute("data-plot")); } catch (e) { return; }
    if (!window.uPlot || !d || !d.x) { return; }
    var w = Math.max(300, el.clientWidth || 800);
    // buckets of 60, 5 and 1 minutes (x = their starts, y = count / width): steps
    var steps = window.uPlot.paths && window.uPlot.paths.stepped ? window.uPlot.paths.stepped({align: 1}) : undefined;
    var opts = {
      width: w, height: 220,
      scales: {x: {time: true}},
      series: [
        {},
        {label: "done / min", stroke: "#2e7d32", fill: "rgba(46,125,50,0.15)", width: 1.5, paths: steps},
        {label: "failed / min", stroke: "#c62828", fill: "rgba(198,40,40,0.12)", width: 1.5, paths: steps}
      ],
      axes: [{}, {label: "tokens / min", size: 50}],
      legend: {live: true}
    };
    el.textContent = "";
    plots.set(el, new window.uPlot(opts, [d.x, d.done, d.failed], el));
  }

  function drawAll(root) {
    (root || document).querySelectorAll(".plot[data-plot]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function (ev) { drawAll(ev.target.parentNode || document); });
  window.addEventListener("resize", function () { drawAll(document); });
})();
