/* The radiologist's slice viewer on the report page: previous/next, a range slider, the mouse wheel
   and the arrow keys move through the analysed series; window buttons re-render the slice; a drag on
   the image outlines a missed finding and fills the "add a missed finding" form in image pixels.
   The rest of the page follows the viewer: the window links at the top, the review forms, the key
   images and the address bar carry the current slice and window, so a reload, a window change or a
   decision on a finding comes back to the slice the reader was on.
   Progressive enhancement: without JavaScript the links and forms of the viewer work on their own. */
(function () {
  "use strict";

  function setup(viewer) {
    var count = parseInt(viewer.dataset.count, 10);
    var index = parseInt(viewer.dataset.index, 10) || 0;
    var preset = viewer.dataset.window || "lung";
    var stage = viewer.querySelector(".viewer-stage");
    var image = viewer.querySelector(".slice-image");
    var drawBox = viewer.querySelector(".draw-box");
    var range = viewer.querySelector("input[type=range]");
    var label = viewer.querySelector(".slice-label");
    var addForm = viewer.querySelector("form.add-finding");
    var windows = viewer.querySelector(".viewer-windows");

    viewer.querySelectorAll(".js-hide").forEach(function (el) { el.hidden = true; });
    if (windows) { windows.hidden = false; }

    function sliceUrl(i) {
      return viewer.dataset.sliceUrl.replace(viewer.dataset.sentinel, String(i)) + "?window=" + encodeURIComponent(preset);
    }

    function field(name) { return addForm ? addForm.querySelector("[name=" + name + "]") : null; }

    function clearBox() {
      drawBox.hidden = true;
      ["x0", "y0", "x1", "y1"].forEach(function (name) { var input = field(name); if (input) { input.value = ""; } });
    }

    // Everything outside the viewer that names a slice or a window, kept in step with it.
    function syncPage() {
      document.querySelectorAll("nav.windows a[data-window]").forEach(function (link) {
        var url = new URL(link.href, window.location.href);
        url.searchParams.set("slice", String(index + 1));
        link.href = url.pathname + url.search + url.hash;
        if (link.dataset.window === preset) { link.setAttribute("aria-current", "true"); }
        else { link.removeAttribute("aria-current"); }
      });
      document.querySelectorAll("input.keeps-slice").forEach(function (input) { input.value = String(index + 1); });
      document.querySelectorAll("form input[type=hidden][name=window]").forEach(function (input) { input.value = preset; });
      document.querySelectorAll("img.key-image").forEach(function (img) {
        var url = new URL(img.getAttribute("src"), window.location.href);
        if (url.searchParams.get("window") !== preset) {
          url.searchParams.set("window", preset);
          img.src = url.pathname + url.search;
          img.alt = img.alt.replace(/, [a-z ]+ window,/, ", " + preset.replace("_", " ") + " window,");
        }
      });
      if (window.history && window.history.replaceState) {
        var here = new URL(window.location.href);
        here.searchParams.set("window", preset);
        here.searchParams.set("slice", String(index + 1));
        window.history.replaceState(window.history.state, "", here.pathname + here.search + here.hash);
      }
    }

    function show(i) {
      i = Math.max(0, Math.min(count - 1, i));
      if (i !== index) { clearBox(); }
      index = i;
      viewer.dataset.index = String(i);
      if (image.getAttribute("src") !== sliceUrl(i)) { image.src = sliceUrl(i); }
      image.alt = "Slice " + (i + 1) + " of " + count + ", " + preset.replace("_", " ") + " window";
      range.value = String(i + 1);
      label.textContent = (i + 1) + " / " + count;
      var slice = field("slice");
      if (slice) { slice.value = String(i + 1); }
      viewer.querySelectorAll("[data-step]").forEach(function (link) {
        var target = i + parseInt(link.dataset.step, 10);
        link.setAttribute("aria-disabled", target < 0 || target >= count ? "true" : "false");
      });
      syncPage();
    }

    viewer.querySelectorAll("[data-step]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        show(index + parseInt(link.dataset.step, 10));
      });
    });
    range.addEventListener("input", function () { show(parseInt(range.value, 10) - 1); });
    stage.addEventListener("wheel", function (event) {
      if (event.deltaY === 0) { return; }
      event.preventDefault();  // scroll the slices, not the page
      show(index + (event.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    stage.addEventListener("keydown", function (event) {
      var step = { ArrowDown: 1, ArrowRight: 1, PageDown: 1, ArrowUp: -1, ArrowLeft: -1, PageUp: -1 }[event.key];
      if (step) { event.preventDefault(); show(index + step); }
      if (event.key === "Home") { event.preventDefault(); show(0); }
      if (event.key === "End") { event.preventDefault(); show(count - 1); }
    });
    if (windows) {
      windows.querySelectorAll("[data-window]").forEach(function (button) {
        button.addEventListener("click", function () {
          preset = button.dataset.window;
          windows.querySelectorAll("[data-window]").forEach(function (b) {
            b.setAttribute("aria-pressed", b === button ? "true" : "false");
          });
          show(index);
        });
      });
    }
    show(index);

    if (!addForm || viewer.dataset.canDraw !== "true") { return; }

    // Drawing: displayed (CSS) pixels on the image map to image pixels by the rendered size.
    var start = null;

    function point(event) {
      var rect = image.getBoundingClientRect();
      var x = Math.max(0, Math.min(rect.width, event.clientX - rect.left));
      var y = Math.max(0, Math.min(rect.height, event.clientY - rect.top));
      return { x: x, y: y, rect: rect };
    }

    function place(a, b) {
      var left = Math.min(a.x, b.x), top = Math.min(a.y, b.y);
      drawBox.style.left = (image.offsetLeft + left) + "px";
      drawBox.style.top = (image.offsetTop + top) + "px";
      drawBox.style.width = Math.abs(b.x - a.x) + "px";
      drawBox.style.height = Math.abs(b.y - a.y) + "px";
      drawBox.hidden = false;
    }

    function fill(a, b) {
      var sx = (image.naturalWidth || a.rect.width) / a.rect.width;
      var sy = (image.naturalHeight || a.rect.height) / a.rect.height;
      var maxX = (image.naturalWidth || a.rect.width) - 1, maxY = (image.naturalHeight || a.rect.height) - 1;
      var box = {
        x0: Math.round(Math.min(a.x, b.x) * sx), y0: Math.round(Math.min(a.y, b.y) * sy),
        x1: Math.min(maxX, Math.round(Math.max(a.x, b.x) * sx)), y1: Math.min(maxY, Math.round(Math.max(a.y, b.y) * sy))
      };
      if (box.x1 <= box.x0 || box.y1 <= box.y0) { clearBox(); return; }  // a click, not a drag
      Object.keys(box).forEach(function (name) { field(name).value = String(box[name]); });
      field("slice").value = String(index + 1);
    }

    image.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) { return; }
      event.preventDefault();
      image.setPointerCapture(event.pointerId);
      start = point(event);
      place(start, start);
    });
    image.addEventListener("pointermove", function (event) {
      if (start) { place(start, point(event)); }
    });
    image.addEventListener("pointerup", function (event) {
      if (!start) { return; }
      var end = point(event);
      place(start, end);
      fill(start, end);
      start = null;
    });
    image.addEventListener("pointercancel", function () { start = null; clearBox(); });
  }

  document.querySelectorAll(".slice-viewer[data-slice-url]").forEach(setup);
})();
