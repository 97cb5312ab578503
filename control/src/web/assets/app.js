// Kokoa dashboard: the only script. Everything works without it; it adds
// - live overview panels: #live[data-live] is fetched again every 5 s and on every new event;
// - the live event table: tbody[data-feed] gets new rows from the server-sent event stream.
"use strict";
(function () {
  function feed(url, onEvent) {
    if (!window.EventSource) return null;
    var source = new EventSource(url);
    source.addEventListener("audit", function (e) { onEvent(JSON.parse(e.data)); });
    return source;
  }

  var live = document.querySelector("[data-live]");
  if (live) {
    var busy = false;
    var refresh = function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(live.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { window.location = "/login"; return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null && html !== undefined) live.innerHTML = html; })
        .catch(function () {})
        .then(function () { busy = false; });
    };
    setInterval(refresh, 5000);
    feed("/events/stream", refresh);
  }

  var rows = document.querySelector("tbody[data-feed]");
  if (rows) {
    var status = document.getElementById("feed-status");
    var source = feed(rows.getAttribute("data-feed"), function (ev) {
      if (rows.querySelector('[data-event="' + ev.id + '"]')) return;
      var tr = document.createElement("tr");
      tr.className = "new";
      tr.setAttribute("data-event", ev.id);
      [ev.id, ev.at, ev.actor, ev.what, ev.entity_id].forEach(function (text, i) {
        var td = document.createElement("td");
        td.textContent = String(text);
        if (i === 4) td.className = "small";
        tr.appendChild(td);
      });
      rows.insertBefore(tr, rows.firstChild);
    });
    if (source && status) {
      source.onopen = function () { status.textContent = "Live: new events appear at the top."; };
      source.onerror = function () { status.textContent = "Live feed interrupted; reconnecting."; };
    }
  }
})();
