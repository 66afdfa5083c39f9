(function () {
  var table = document.getElementById("scan-table");
  if (table) {
    var body = table.tBodies[0], heads = table.tHead.rows[0].cells;
    var select = document.getElementById("verdict-filter"), shown = document.getElementById("shown");
    var cards = document.querySelectorAll("#cards .card");
    var view = {sort: "", order: "asc", verdict: "all"};
    var each = function (list, f) { Array.prototype.forEach.call(list, f); };
    var key = function (row, i) {
      var cell = row.cells[i], v = cell.getAttribute("data-sort");
      if (v === null) { v = cell.textContent; }
      return (v !== "" && isFinite(v)) ? parseFloat(v) : v.toLowerCase();
    };
    var compare = function (x, y) {
      if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
      return x < y ? -1 : (x > y ? 1 : 0);
    };
    var column = function (name) {
      for (var i = 0; i < heads.length; i++) { if (heads[i].getAttribute("data-key") === name) { return i; } }
      return -1;
    };
    var matches = function (el) {
      var v = view.verdict;
      return v === "all" || el.getAttribute("data-status") === v || el.getAttribute("data-verdict") === v;
    };
    var apply = function () {
      var i = column(view.sort), n = 0;
      if (i >= 0) {
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) { var c = compare(key(a, i), key(b, i)); return view.order === "desc" ? -c : c; });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      for (var j = 0; j < heads.length; j++) {
        heads[j].setAttribute("aria-sort", j !== i ? "none" : (view.order === "desc" ? "descending" : "ascending"));
      }
      each(body.rows, function (r) { r.hidden = !matches(r); n += r.hidden ? 0 : 1; });
      each(cards, function (c) { c.hidden = !matches(c); });
      select.value = view.verdict;
      shown.textContent = n + " of " + body.rows.length + " scans shown";
    };
    var remember = function () {  // the view in the address, so that a link shows the same
      var hash = "#sort=" + encodeURIComponent(view.sort) + "&order=" + view.order + "&verdict=" +
        encodeURIComponent(view.verdict);
      if (window.history && history.replaceState) { history.replaceState(null, "", hash); }
    };
    each(heads, function (th) {
      th.addEventListener("click", function () {
        var name = th.getAttribute("data-key");
        view.order = (view.sort === name && view.order === "asc") ? "desc" : "asc";
        view.sort = name;
        apply();
        remember();
      });
    });
    select.addEventListener("change", function () { view.verdict = select.value; apply(); remember(); });
    var asked = new URLSearchParams(location.hash.replace(/^#/, "")), verdict = asked.get("verdict");
    if (column(asked.get("sort")) >= 0) { view.sort = asked.get("sort"); }
    if (asked.get("order") === "desc") { view.order = "desc"; }
    if (Array.prototype.some.call(select.options, function (o) { return o.value === verdict; })) {
      view.verdict = verdict;
    }
    apply();
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
