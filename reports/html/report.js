// repro-audit report: name filters and the gradient table. Names go in with textContent, never as markup.
(function () {
  "use strict";

  function filterTarget(input) {
    var target = document.getElementById(input.getAttribute("data-filter"));
    if (!target) { return; }
    var query = input.value.trim().toLowerCase();
    var items = target.querySelectorAll("[data-name]");
    var shown = 0;
    // Descendants before ancestors: a tree node stays visible when one of its consequences matches.
    for (var i = items.length - 1; i >= 0; i--) {
      var item = items[i];
      var match = !query || item.getAttribute("data-name").toLowerCase().indexOf(query) !== -1 ||
        item.querySelector("[data-match='1']") !== null;
      item.setAttribute("data-match", match ? "1" : "0");
      item.hidden = !match;
      if (match) { shown++; }
    }
    if (query) {
      for (var node = target; node; node = node.parentElement) {
        if (node.tagName === "DETAILS") { node.open = true; }
      }
      var nested = target.querySelectorAll("details.consequences");
      for (var j = 0; j < nested.length; j++) {
        if (nested[j].querySelector("[data-match='1']")) { nested[j].open = true; }
      }
    }
    var counter = document.querySelector("[data-filter-count='" + input.getAttribute("data-filter") + "']");
    if (counter) { counter.textContent = query ? shown + " of " + items.length + " shown" : ""; }
  }

  // A link to a folded section (or into one) unfolds it: the section's own <details>, and every ancestor.
  function openAncestors(element) {
    var fold = element.querySelector(":scope > details.fold");
    if (fold) { fold.open = true; }
    for (var node = element; node; node = node.parentElement) {
      if (node.tagName === "DETAILS") { node.open = true; }
    }
  }

  function showHash() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var element = id ? document.getElementById(id) : null;
    if (element) { openAncestors(element); element.scrollIntoView(); }
  }

  // The per-module table scrolls inside its box: bring the first differing output into view there.
  function showFirstModule() {
    var row = document.getElementById("first-module");
    var box = row ? row.closest(".scroll") : null;
    if (box && row.offsetTop > box.clientHeight / 2) { box.scrollTop = row.offsetTop - box.clientHeight / 3; }
  }

  function formatNumber(value) {
    if (value === null || value === undefined) { return "—"; }
    if (typeof value === "string") { return value; }
    if (Number.isInteger(value)) { return String(value); }
    return value.toPrecision(6);
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) { td.className = className; }
    row.appendChild(td);
  }

  function drawGradients(data, step, filterInput) {
    var table = document.getElementById("gradient-table");
    var body = document.createElement("tbody");
    var runs = [data.a[step], data.b[step]];
    var marks = data.marks[step] || {};
    var stats = ["norm", "max_abs", "mean", "nan", "inf"];
    for (var i = 0; i < data.names.length; i++) {
      var row = document.createElement("tr");
      row.setAttribute("data-name", data.names[i]);
      cell(row, data.names[i], "name");
      for (var s = 0; s < stats.length; s++) {
        for (var r = 0; r < 2; r++) {
          var run = runs[r];
          if (!run) { cell(row, "not recorded", "na-cell"); continue; }
          var present = run.present[i];
          if (present !== 1) { cell(row, present === 2 ? "no grad" : "absent", "na-cell"); continue; }
          var value = run[stats[s]][i];
          var hot = typeof value === "string" || ((stats[s] === "nan" || stats[s] === "inf") && value > 0);
          cell(row, formatNumber(value), hot ? "num hot" : "num");
        }
      }
      var mark = marks[String(i)];
      cell(row, mark || "", mark ? "mark" : "");
      if (mark) { row.className = "marked"; }
      body.appendChild(row);
    }
    table.replaceChild(body, table.tBodies[0]);
    if (filterInput) { filterTarget(filterInput); }
  }

  function setupGradients() {
    var source = document.getElementById("gradient-data");
    var select = document.getElementById("gradient-step");
    if (!source || !select) { return; }
    var data = JSON.parse(source.textContent);
    var filterInput = document.querySelector("input[data-filter='gradient-table']");
    select.addEventListener("change", function () { drawGradients(data, select.value, filterInput); });
    drawGradients(data, select.value, filterInput);
  }

  var inputs = document.querySelectorAll("input[data-filter]");
  for (var k = 0; k < inputs.length; k++) {
    inputs[k].addEventListener("input", function (event) { filterTarget(event.target); });
  }
  setupGradients();
  showFirstModule();
  window.addEventListener("hashchange", showHash);
  if (window.location.hash) { showHash(); }
})();
