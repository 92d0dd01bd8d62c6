// Actions that cannot be undone ask first: a form carrying data-confirm="question" is sent only
// once the user agrees. Buttons named "step" only redraw a form, so they never ask.
document.addEventListener("submit", function (event) {
  "use strict";
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (!question || (event.submitter && event.submitter.name === "step")) return;
  if (!window.confirm(question)) event.preventDefault();
}, true);
