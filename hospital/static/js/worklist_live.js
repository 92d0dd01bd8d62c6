/* The worklist follows the day without a reload: every few seconds it asks GET /api/worklist (the
   same day and filters, cookie auth) what has arrived, updates each row's images and, when a
   study appears, starts following its AI analysis (analysis_progress.js). Examinations booked after
   the page loaded are announced with a link to reload, rather than rows appearing under the reader.
   Progressive enhancement: without JavaScript the page shows the state it was rendered with.
   Polls are background requests (they do not keep the session alive); on 401 the page reloads to
   the sign-in page. */
(function () {
  "use strict";
  var INTERVAL_MS = 5000;
  var table = document.getElementById("worklist");
  if (!table || !table.dataset.liveUrl) { return; }

  function renderArrival(row, arrival) {
    var cell = row.querySelector("td.arrival");
    var badge = document.createElement("span");
    badge.className = "badge " + (arrival.complete ? "good" : "wait");
    badge.textContent = window.hospitalText(arrival.complete ? "complete" : "arriving");
    var count = document.createElement("span");
    count.className = "arrival-count";
    count.textContent = window.hospitalText("images_in_series", {
      images: window.hospitalPlural("images", arrival.images), series: arrival.series,
    }) + (arrival.derived ? " " + window.hospitalText("from_the_ai", { num: arrival.derived }) : "");
    cell.replaceChildren(badge, document.createTextNode(" "), count);
    var ai = row.querySelector("td.ai-cell");
    if (ai && !ai.querySelector("[data-analysis-url]")) {
      var span = document.createElement("span");
      span.className = "ai-progress";
      span.dataset.analysisUrl = arrival.analysis_url;
      span.dataset.retryUrl = arrival.retry_url;
      span.dataset.status = "unknown";
      span.setAttribute("aria-live", "polite");
      var label = document.createElement("span");
      label.className = "ai-label";
      label.textContent = window.hospitalText("ai_waiting");
      var bar = document.createElement("progress");
      bar.hidden = true;
      bar.setAttribute("aria-label", window.hospitalText("ai_progress"));
      span.append(label, " ", bar);
      ai.replaceChildren(span);
    }
    if (arrival.complete && ai && window.hospitalWatchAnalysis) {
      var watched = ai.querySelector("[data-analysis-url]");
      if (watched && watched.dataset.watching !== "1" && watched.dataset.status === "unknown") {
        watched.dataset.watching = "1";
        window.hospitalWatchAnalysis(watched);
      }
    }
  }

  function update(entries) {
    var unseen = 0;
    entries.forEach(function (entry) {
      var row = table.querySelector("tr[data-referral-id='" + entry.referral_id + "']");
      if (!row) { unseen += 1; return; }
      if (entry.arrival) { renderArrival(row, entry.arrival); }
    });
    var news = document.getElementById("worklist-news");
    if (news && unseen) {
      news.hidden = false;
      news.replaceChildren(window.hospitalPlural("booked_since", unseen) + " ");
      var reload = document.createElement("a");
      reload.href = window.location.href;
      reload.textContent = window.hospitalText("show_them");
      news.appendChild(reload);
    }
  }

  function poll() {
    fetch(table.dataset.liveUrl, { credentials: "same-origin",
                                   headers: { Accept: "application/json", "X-Background-Request": "1" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (body) {
        if (!body) { return; }
        update(body.entries || []);
        window.setTimeout(poll, INTERVAL_MS);
      })
      .catch(function () { window.setTimeout(poll, INTERVAL_MS * 3); });
  }

  window.setTimeout(poll, INTERVAL_MS);
})();
