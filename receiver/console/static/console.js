// receiver console: the live tail (server-sent events) and the chart's refresh.
// Text from callbacks is only ever set with textContent: never parsed as markup.
"use strict";
(function () {
  var base = document.body.getAttribute("data-base") || "";
  var tail = document.getElementById("tail");
  var chart = document.getElementById("chart");
  if (chart) {
    var src = chart.getAttribute("src");
    setInterval(function () {
      chart.setAttribute("src", src + "&t=" + Date.now());
    }, 30000);
  }
  if (!tail || !window.EventSource) {
    return;
  }
  var body = tail.tBodies[0];
  var status = document.getElementById("live-status");
  var stream = new EventSource(base + "/stream");
  stream.onopen = function () {
    status.textContent = "live";
  };
  stream.onerror = function () {
    status.textContent = "reconnecting…";
  };
  stream.onmessage = function (message) {
    var item = JSON.parse(message.data);
    var row = document.createElement("tr");
    row.className = "outcome-" + item.outcome;
    var cells = [item.at, item.channel, item.type, item.outcome, String(item.status),
                 item.message_id, item.person, item.text];
    cells.forEach(function (text, index) {
      var cell = document.createElement("td");
      if (index === 0 && item.journaled) {
        var link = document.createElement("a");
        link.href = base + "/events/" + encodeURIComponent(item.event_id);
        link.textContent = text;
        cell.appendChild(link);
      } else {
        cell.textContent = text;
      }
      if (index === 7) {
        cell.className = "text";
      }
      row.appendChild(cell);
    });
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 200) {
      body.deleteRow(body.rows.length - 1);
    }
  };
})();
