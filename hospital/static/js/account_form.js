// The account form without round trips: the chosen role's fields appear as the role is chosen,
// the organisations offered are the kind the role works in, and Enter in the patient search
// searches. Without this script the form still works: "Show the fields for this role" and
// "Search patients" post it back and the server shows the same.
(function () {
  "use strict";
  for (const form of document.querySelectorAll("form[data-account-form]")) {
    const role = form.querySelector("select[name=role]");
    if (!role) continue;
    for (const button of form.querySelectorAll("[data-without-script]")) button.remove();
    const organisation = form.querySelector("select[name=organization_id]");
    const needs = form.querySelector("#role-needs-text");
    const show = function () {
      const option = role.selectedOptions[0];
      for (const set of form.querySelectorAll("fieldset[data-roles]")) {
        set.hidden = !set.dataset.roles.split(" ").includes(role.value);
      }
      const kinds = option && option.dataset.kinds ? option.dataset.kinds.split(" ") : [];
      if (organisation) {
        for (const choice of organisation.options) {
          if (!choice.value) continue;
          const fits = kinds.includes(choice.dataset.kind);
          choice.hidden = !fits;
          choice.disabled = !fits;
          if (!fits && choice.selected) organisation.value = "";
        }
      }
      // The page's own words for "no role yet" (data-none), in the reader's language.
      if (needs) needs.textContent = option && option.dataset.needs ? option.dataset.needs : needs.dataset.none;
    };
    role.addEventListener("change", show);
    const query = form.querySelector("input[name=patient_query]");
    const search = form.querySelector("button[name=step][value=find_patient]");
    if (query && search) {
      query.addEventListener("keydown", function (event) {
        if (event.key === "Enter") {
          event.preventDefault();
          search.click();
        }
      });
    }
  }
})();
