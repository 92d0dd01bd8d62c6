/* The words the page's scripts write, in the page's language: base.html sends them as JSON
   (hospital.i18n.js_messages). hospitalText("key", {name: value}) fills %(name)s placeholders;
   hospitalPlural("key", n, {...}) picks the one/other form and fills %(num)d with n. A key the page
   did not send comes back as itself, so a missing word shows, never breaks the script. */
(function () {
  "use strict";
  var source = document.getElementById("page-text");
  var words = {};
  try { words = source ? JSON.parse(source.textContent) : {}; } catch (e) { words = {}; }

  function fill(text, values) {
    return String(text).replace(/%\((\w+)\)[sd]/g, function (whole, name) {
      return values && Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : whole;
    });
  }

  window.hospitalText = function (key, values) {
    var text = words[key];
    if (Array.isArray(text)) { text = text[1]; }
    return fill(text === undefined ? key : text, values);
  };

  window.hospitalPlural = function (key, n, values) {
    var forms = words[key];
    var text = Array.isArray(forms) ? forms[n === 1 ? 0 : 1] : (forms === undefined ? key : forms);
    var all = Object.assign({ num: n }, values || {});
    return fill(text, all);
  };
}());
