// boshreg dashboard: refresh the page's content in place while it is open and the box is ticked.
// Progressive: without JavaScript the page works the same, only without refreshing itself. The content is
// fetched again from this page's own address and swapped in, so the scroll position and the form stay.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var seconds = Number(main && main.dataset.refreshSeconds);
  if (!seconds) { return; }
  var control = document.querySelector(".refresh");
  var box = document.getElementById("auto-refresh");
  var said = document.getElementById("refreshed");
  control.hidden = false;
  function busy() {
    var focused = document.activeElement;
    return focused && focused.closest && focused.closest("form");  // never while someone types a search
  }
  function refresh() {
    if (!box.checked || document.visibilityState !== "visible" || busy()) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) { return answer.ok ? answer.text() : Promise.reject(answer.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) {
          document.getElementById("live").replaceWith(fresh);
          said.textContent = "updated " + new Date().toLocaleTimeString();
        }
      })
      .catch(function (status) { said.textContent = "not updated (" + status + ")"; });
  }
  window.setInterval(refresh, seconds * 1000);
}());
