// Actions that cannot be undone ask first: a form carrying data-confirm="question" is sent only
// once the user agrees, and then says so (confirmed=yes), so the server does not ask again on a
// page of its own (which it does for a browser without this script: hospital.web.ask_first).
// Buttons named "step" only redraw a form, so they never ask.
document.addEventListener("submit", function (event) {
  "use strict";
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (!question || (event.submitter && event.submitter.name === "step")) return;
  if (!window.confirm(question)) {
    event.preventDefault();
    return;
  }
  let agreed = form.querySelector("input[name='confirmed']");
  if (!agreed) {
    agreed = document.createElement("input");
    agreed.type = "hidden";
    agreed.name = "confirmed";
    form.appendChild(agreed);
  }
  agreed.value = "yes";
}, true);
