/* Live AI-analysis progress on the worklist: every element with data-analysis-url is refreshed
   from GET /api/studies/<id>/analysis (cookie auth) until the job completes or fails; a failed one
   (or one whose DICOM outputs failed) offers "Retry analysis".
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
    var text = job.summary || window.hospitalText("ai_status", { status: job.status });
    if (!job.summary && (job.status === "running" || job.status === "completed")) {
      text += " " + window.hospitalText("slices_done", { done: done, total: total });
    }
    if (!job.summary && job.status === "failed" && job.error) { text += ": " + job.error; }
    // The report's DICOM outputs (SR, key images) are their own job: its failure is shown, not hidden.
    if (job.outputs_error) { text += "; " + window.hospitalText("outputs_failed", { error: job.outputs_error }); }
    label.textContent = text;
    el.classList.toggle("ai-failed", job.status === "failed" || !!job.outputs_error);
    offerRetry(el, job.status === "failed" || !!job.outputs_error);
  }

  // A failed analysis can be run again from the worklist: a plain form POST (CSRF token from the
  // page), so it works like every other button and comes back to this page with its message.
  function offerRetry(el, failed) {
    var existing = el.querySelector("form.ai-retry");
    if (!failed || !el.dataset.retryUrl) { if (existing) { existing.remove(); } return; }
    if (existing) { return; }
    var token = document.querySelector("input[name=csrf_token]");
    if (!token) { return; }
    var form = document.createElement("form");
    form.method = "post";
    form.action = el.dataset.retryUrl;
    form.className = "ai-retry inline";
    var csrf = document.createElement("input");
    csrf.type = "hidden"; csrf.name = "csrf_token"; csrf.value = token.value;
    var back = document.createElement("input");
    back.type = "hidden"; back.name = "next"; back.value = window.location.pathname + window.location.search;
    var button = document.createElement("button");
    button.type = "submit"; button.className = "secondary"; button.textContent = window.hospitalText("retry_analysis");
    form.appendChild(csrf); form.appendChild(back); form.appendChild(button);
    el.appendChild(form);
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

  function watch(el) {
    if (!FINAL[el.dataset.status]) { poll(el); }
  }

  // The live worklist hands over rows whose images arrived after the page loaded.
  window.hospitalWatchAnalysis = watch;
  document.querySelectorAll("[data-analysis-url]").forEach(watch);
})();
