// Live region of the execution page: re-render it from the server at most once a second
// while the execution is active; stop polling when the server says it has ended.
(function () {
  "use strict";
  var PERIOD_MS = 1000;
  var RETRY_MS = 5000;

  function region() { return document.getElementById("live"); }

  function openDetails(root) {
    var ids = [];
    root.querySelectorAll("details[id]").forEach(function (d) { if (d.open) ids.push(d.id); });
    return ids;
  }

  // Someone is answering a signal (focus in its form, or a comment typed): re-rendering now
  // would throw their input away, so wait until they are done.
  function answering(root) {
    var active = document.activeElement;
    if (active && root.contains(active) && active.closest("form[data-keep-while-focused]")) return true;
    var typed = false;
    root.querySelectorAll("form[data-keep-while-focused] textarea").forEach(function (t) {
      if (t.value) typed = true;
    });
    return typed;
  }

  function poll() {
    var current = region();
    if (!current || current.dataset.live !== "true") return;
    if (answering(current)) { setTimeout(poll, PERIOD_MS); return; }
    fetch(current.dataset.liveUrl, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var keepOpen = openDetails(current);
        var holder = document.createElement("div");
        holder.innerHTML = html;
        var next = holder.querySelector("#live");
        if (!next) return;
        keepOpen.forEach(function (id) {
          var d = next.querySelector("#" + CSS.escape(id));
          if (d) d.open = true;
        });
        current.replaceWith(next);
        if (next.dataset.live === "true") setTimeout(poll, PERIOD_MS);
      })
      .catch(function () { setTimeout(poll, RETRY_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () { setTimeout(poll, PERIOD_MS); });
})();
