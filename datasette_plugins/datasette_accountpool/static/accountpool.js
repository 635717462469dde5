// Self-refresh of the pool overview: fetch the server-rendered fragment and swap it in,
// without a full reload. Pauses while the tab is hidden; marks the data stale on errors.
(function () {
  "use strict";
  var live = document.getElementById("pool-live");
  if (!live || !window.fetch) return;
  var src = live.getAttribute("data-src");
  var every = (parseInt(live.getAttribute("data-refresh"), 10) || 5) * 1000;
  var busy = false;

  function tick() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(src, { credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.classList.remove("ap-stale");
      })
      .catch(function () {
        live.classList.add("ap-stale");
      })
      .then(function () {
        busy = false;
      });
  }

  setInterval(tick, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) tick();
  });
})();
