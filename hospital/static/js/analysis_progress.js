/* Live AI-analysis progress on the worklist: every element with data-analysis-url is refreshed
   from GET /api/studies/<id>/analysis (cookie auth) until the job completes or fails.
   Progressive enhancement: without JavaScript the page shows the state it was rendered with.
   Polls say they are background requests, so a worklist left open does not keep its user signed in;
   once the session has ended (401) the page reloads, which leads to the sign-in page instead of
   leaving patients' names on an unattended screen. */
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  // not_applicable: the series is outside the model's validated range; the model did not run.
  var FINAL = { completed: true, failed: true, not_applicable: true };
  var signedOut = false;

  function render(el, job) {
    var label = el.querySelector(".ai-label");
    var bar = el.querySelector("progress");
    var total = job.slices_total || 0;
    var done = job.slices_done || 0;
    el.dataset.status = job.status;
    if (bar) { bar.max = total || 1; bar.value = done; bar.hidden = job.status !== "running"; }
    // The server words the state ("AI not applicable: modality NM; ..."); older answers lack it.
    var text = job.summary || "AI " + job.status;
    if (!job.summary && (job.status === "running" || job.status === "completed")) { text += " " + done + "/" + total + " slices"; }
    if (!job.summary && job.status === "failed" && job.error) { text += ": " + job.error; }
    label.textContent = text;
  }

  function poll(el) {
    var headers = { Accept: "application/json", "X-Background-Request": "1" };
    fetch(el.dataset.analysisUrl, { credentials: "same-origin", headers: headers })
      .then(function (response) {
        if (response.status === 401) { signedOut = true; window.location.reload(); return null; }
        if (response.status === 404) { return null; }  // images in, analysis not started yet
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (job) {
        if (signedOut) { return; }  // the page is reloading; nothing more to poll
        if (job) { render(el, job); }
        if (!job || !FINAL[job.status]) { window.setTimeout(function () { poll(el); }, INTERVAL_MS); }
      })
      .catch(function () {
        // A network blip: try again later, more slowly, without disturbing the page.
        window.setTimeout(function () { poll(el); }, INTERVAL_MS * 3);
      });
  }

  document.querySelectorAll("[data-analysis-url]").forEach(function (el) {
    if (!FINAL[el.dataset.status]) { poll(el); }
  });
})();
