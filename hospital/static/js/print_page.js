// A button marked data-print opens the browser's print dialog (print, or save as PDF).
document.addEventListener("click", function (event) {
  "use strict";
  const target = event.target instanceof Element ? event.target.closest("[data-print]") : null;
  if (target) window.print();
});
