(function () {
  var root = document.documentElement;
  var note = function (text) {
    root.setAttribute("data-js-errors", (root.getAttribute("data-js-errors") || "") + text + "\n");
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && t.tagName) {
      note("cannot load " + t.tagName.toLowerCase() + " " + String(t.src || t.href || "").slice(0, 60));
    } else {
      note((e.message || "error") + " (line " + e.lineno + ")");
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
})();
