// keygate dashboard: small enhancements only; every action works without this script.
// Served by keygate serve (/assets/app.js); no inline scripts anywhere (the CSP forbids them).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Times: the viewer's zone, UTC kept on hover (the page shows UTC without this script).
  var fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  document.querySelectorAll("time[datetime]").forEach(function (t) {
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) { t.title = t.textContent; t.textContent = fmt.format(d); }
  });
  // The key shown once: a copy button.
  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    var source = document.getElementById(b.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) { return; }
    b.hidden = false;
    b.addEventListener("click", function () {
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        b.textContent = "Copied";
        setTimeout(function () { b.textContent = "Copy"; }, 2000);
      });
    });
  });
  // The tenant switch: applies on change.
  var sw = document.getElementById("tenant-switch");
  if (sw && sw.form) { sw.addEventListener("change", function () { sw.form.submit(); }); }
});
