/* The radiologist's slice viewer on the report page (the reading workspace).

   Slices: previous/next, a range slider, the mouse wheel and the arrow keys move through the
   analysed series; window buttons re-render the slice. Tools (one at a time, a toolbar of toggle
   buttons): outline a missed finding (fills the "add a missed finding" form in image pixels), move
   or resize a finding's box (posts the finding's own "edit the box" form), pan, free window/level by
   drag (the server renders the slice in the asked window), and measure a distance in mm from the
   series' pixel spacing. Ctrl + wheel, the + / - buttons or keys zoom; "Reset view" undoes zoom and pan.
   A prior study shown beside it (data-follows) scrolls with it while "Scroll with the current
   study" is ticked, at the same relative depth.

   The rest of the page follows the viewer: the window links at the top, the review forms, the key
   images and the address bar carry the current slice and window, so a reload, a window change or a
   decision on a finding comes back to the slice the reader was on.
   Every position is kept in image pixels (the DICOM columns and rows), so zoom and pan change
   nothing but the view. Progressive enhancement: without JavaScript the links and forms of the
   viewer work on their own. */
(function () {
  "use strict";

  var MIN_ZOOM = 1, MAX_ZOOM = 8;

  function parsePresets(text) {
    var presets = {};
    (text || "").split(",").forEach(function (entry) {
      var parts = entry.split(":");
      if (parts.length === 3) { presets[parts[0]] = { c: parseFloat(parts[1]), w: parseFloat(parts[2]) }; }
    });
    return presets;
  }

  function setup(viewer) {
    var count = parseInt(viewer.dataset.count, 10);
    var index = parseInt(viewer.dataset.index, 10) || 0;
    var preset = viewer.dataset.window || "lung";
    var presets = parsePresets(viewer.dataset.presets);
    var custom = null;  // a free window {c, w} in HU, from the window/level drag
    var spacing = (viewer.dataset.pixelSpacing || "").split(",").map(parseFloat);  // [row mm, column mm]
    var stage = viewer.querySelector(".viewer-stage");
    var canvas = viewer.querySelector(".viewer-canvas") || stage;
    var image = viewer.querySelector(".slice-image");
    var drawBox = viewer.querySelector(".draw-box");
    var range = viewer.querySelector("input[type=range]");
    var label = viewer.querySelector(".slice-label");
    var addForm = viewer.querySelector("form.add-finding");
    var windows = viewer.querySelector(".viewer-windows");
    var tools = viewer.querySelector(".viewer-tools");
    var readout = viewer.querySelector(".viewer-readout");
    var boxLayer = viewer.querySelector(".finding-boxes");
    var svg = viewer.querySelector(".measure-layer");
    var line = viewer.querySelector(".measure-line");
    var syncRow = viewer.querySelector(".sync-row");
    var syncToggle = viewer.querySelector(".sync-toggle");
    var followed = viewer.dataset.follows ? document.getElementById(viewer.dataset.follows) : null;
    var isMain = !followed;
    var zoom = 1, tx = 0, ty = 0;
    var tool = null;

    viewer.querySelectorAll(".js-hide").forEach(function (el) { el.hidden = true; });
    if (windows) { windows.hidden = false; }
    if (tools) { tools.hidden = false; }
    if (syncRow) { syncRow.hidden = false; }

    function naturalSize() {
      var rect = image.getBoundingClientRect();
      return { w: image.naturalWidth || rect.width / zoom, h: image.naturalHeight || rect.height / zoom };
    }

    function sliceUrl(i) {
      var url = viewer.dataset.sliceUrl.replace(viewer.dataset.sentinel, String(i)) + "?window=" + encodeURIComponent(preset);
      if (custom) { url += "&wc=" + Math.round(custom.c) + "&ww=" + Math.round(custom.w); }
      return url;
    }

    // What the viewer says, in the reader's language: the page gives its words (data-words, made by
    // the template from the catalog); English when it gives none.
    var words = {};
    try { words = JSON.parse(viewer.dataset.words || "{}"); } catch (e) { words = {}; }
    function phrase(key, english, values) {
      var text = words[key] || english;
      Object.keys(values || {}).forEach(function (name) { text = text.split("{" + name + "}").join(String(values[name])); });
      return text;
    }
    function windowWord(name) { return (words.windows && words.windows[name]) || name.replace("_", " "); }

    function say(text) {
      if (!readout) { return; }
      readout.hidden = false;
      readout.textContent = text;
    }

    function field(name) { return addForm ? addForm.querySelector("[name=" + name + "]") : null; }

    function clearBox() {
      if (drawBox) { drawBox.hidden = true; }
      ["x0", "y0", "x1", "y1"].forEach(function (name) { var input = field(name); if (input) { input.value = ""; } });
    }

    // Everything outside the viewer that names a slice or a window, kept in step with it.
    function syncPage() {
      if (!isMain) { return; }
      document.querySelectorAll("nav.windows a[data-window]").forEach(function (link) {
        var url = new URL(link.href, window.location.href);
        url.searchParams.set("slice", String(index + 1));
        link.href = url.pathname + url.search + url.hash;
        if (link.dataset.window === preset && !custom) { link.setAttribute("aria-current", "true"); }
        else { link.removeAttribute("aria-current"); }
      });
      document.querySelectorAll("input.keeps-slice").forEach(function (input) { input.value = String(index + 1); });
      document.querySelectorAll("form input[type=hidden][name=window]").forEach(function (input) { input.value = preset; });
      document.querySelectorAll("img.key-image").forEach(function (img) {
        var url = new URL(img.getAttribute("src"), window.location.href);
        var shown = url.searchParams.get("window");
        if (shown !== preset) {
          url.searchParams.set("window", preset);
          img.src = url.pathname + url.search;
          if (shown) { img.alt = img.alt.replace(windowWord(shown), windowWord(preset)); }
        }
      });
      if (window.history && window.history.replaceState) {
        var here = new URL(window.location.href);
        here.searchParams.set("window", preset);
        here.searchParams.set("slice", String(index + 1));
        window.history.replaceState(window.history.state, "", here.pathname + here.search + here.hash);
      }
    }

    function refreshImage() {
      if (image.getAttribute("src") !== sliceUrl(index)) { image.src = sliceUrl(index); }
      image.alt = phrase(isMain ? "slice" : "priorSlice", (isMain ? "Slice" : "Prior slice") + " {number} of {count}, {window} window",
        { number: index + 1, count: count, window: custom ? phrase("custom", "custom") : windowWord(preset) });
    }

    function show(i) {
      i = Math.max(0, Math.min(count - 1, i));
      if (i !== index) { clearBox(); hideMeasure(); }
      index = i;
      viewer.dataset.index = String(i);
      refreshImage();
      range.value = String(i + 1);
      label.textContent = (i + 1) + " / " + count;
      var slice = field("slice");
      if (slice) { slice.value = String(i + 1); }
      viewer.querySelectorAll("[data-step]").forEach(function (link) {
        var target = i + parseInt(link.dataset.step, 10);
        link.setAttribute("aria-disabled", target < 0 || target >= count ? "true" : "false");
      });
      renderBoxes();
      syncPage();
      viewer.dispatchEvent(new CustomEvent("slicechange", { detail: { index: i, count: count } }));
    }

    function setWindow(name, free) {
      preset = name;
      custom = free;
      if (windows) {
        windows.querySelectorAll("[data-window]").forEach(function (b) {
          b.setAttribute("aria-pressed", !free && b.dataset.window === name ? "true" : "false");
        });
      }
      refreshImage();
      syncPage();
      viewer.dispatchEvent(new CustomEvent("windowchange", { detail: { preset: preset, custom: custom } }));
    }

    // Zoom and pan: a CSS transform of the canvas (image, boxes, measurement) inside the stage.
    function applyView() {
      canvas.style.transform = zoom === 1 && tx === 0 && ty === 0 ? "" : "translate(" + tx + "px, " + ty + "px) scale(" + zoom + ")";
    }

    function clampPan() {
      var w = stage.clientWidth, h = stage.clientHeight;
      tx = Math.min(0, Math.max(w - w * zoom, tx));
      ty = Math.min(0, Math.max(h - h * zoom, ty));
    }

    function zoomAt(factor, cx, cy) {
      var next = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, zoom * factor));
      if (cx === undefined) { cx = stage.clientWidth / 2; cy = stage.clientHeight / 2; }
      tx = cx - (cx - tx) * (next / zoom);
      ty = cy - (cy - ty) * (next / zoom);
      zoom = next;
      clampPan();
      applyView();
      say(phrase("zoom", "Zoom {percent}%", { percent: Math.round(zoom * 100) }));
    }

    function resetView() { zoom = 1; tx = 0; ty = 0; applyView(); say(phrase("zoom", "Zoom {percent}%", { percent: 100 })); }

    viewer.querySelectorAll("[data-step]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        show(index + parseInt(link.dataset.step, 10));
      });
    });
    range.addEventListener("input", function () { show(parseInt(range.value, 10) - 1); });
    stage.addEventListener("wheel", function (event) {
      if (event.deltaY === 0) { return; }
      event.preventDefault();  // scroll the slices (or zoom), not the page
      if (event.ctrlKey || event.metaKey) {
        var rect = stage.getBoundingClientRect();
        zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - rect.left, event.clientY - rect.top);
        return;
      }
      show(index + (event.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    stage.addEventListener("keydown", function (event) {
      var step = { ArrowDown: 1, ArrowRight: 1, PageDown: 1, ArrowUp: -1, ArrowLeft: -1, PageUp: -1 }[event.key];
      if (step) { event.preventDefault(); show(index + step); }
      if (event.key === "Home") { event.preventDefault(); show(0); }
      if (event.key === "End") { event.preventDefault(); show(count - 1); }
      if (event.key === "+" || event.key === "=") { event.preventDefault(); zoomAt(1.25); }
      if (event.key === "-") { event.preventDefault(); zoomAt(0.8); }
      if (event.key === "0") { event.preventDefault(); resetView(); }
    });
    if (windows) {
      windows.querySelectorAll("[data-window]").forEach(function (button) {
        button.addEventListener("click", function () { setWindow(button.dataset.window, null); });
      });
    }
    if (tools) {
      tools.querySelectorAll("[data-tool]").forEach(function (button) {
        button.addEventListener("click", function () { setTool(button.dataset.tool); });
      });
      tools.querySelectorAll("[data-zoom]").forEach(function (button) {
        button.addEventListener("click", function () {
          if (button.dataset.zoom === "in") { zoomAt(1.25); }
          else if (button.dataset.zoom === "out") { zoomAt(0.8); }
          else { resetView(); }
        });
      });
    }
    document.querySelectorAll("a.go-to-slice[data-slice]").forEach(function (link) {
      if (!isMain) { return; }
      link.addEventListener("click", function (event) {
        event.preventDefault();
        show(parseInt(link.dataset.slice, 10) - 1);
        viewer.scrollIntoView({ block: "nearest" });
        stage.focus({ preventScroll: true });
      });
    });

    // A prior beside the current study follows its slice (same relative depth) and its window.
    if (followed) {
      followed.addEventListener("slicechange", function (event) {
        if (syncToggle && !syncToggle.checked) { return; }
        var d = event.detail;
        show(Math.round(d.index * (count - 1) / Math.max(d.count - 1, 1)));
      });
      followed.addEventListener("windowchange", function (event) {
        preset = event.detail.preset;
        custom = event.detail.custom;
        refreshImage();
      });
    }

    function setTool(name) {
      tool = name;
      viewer.dataset.tool = name || "";
      if (tools) {
        tools.querySelectorAll("[data-tool]").forEach(function (b) {
          b.setAttribute("aria-pressed", b.dataset.tool === name ? "true" : "false");
        });
      }
      renderBoxes();
    }

    // A pointer position in image pixels (fractions of the displayed image: zoom and pan included).
    function imagePoint(event) {
      var rect = image.getBoundingClientRect();
      var size = naturalSize();
      var fx = Math.max(0, Math.min(1, (event.clientX - rect.left) / rect.width));
      var fy = Math.max(0, Math.min(1, (event.clientY - rect.top) / rect.height));
      return { x: fx * size.w, y: fy * size.h };
    }

    function percentBox(el, x0, y0, x1, y1) {
      var size = naturalSize();
      el.style.left = (100 * x0 / size.w) + "%";
      el.style.top = (100 * y0 / size.h) + "%";
      el.style.width = (100 * (x1 - x0) / size.w) + "%";
      el.style.height = (100 * (y1 - y0) / size.h) + "%";
    }

    // Outline a missed finding: fills the add form in image pixels.
    function placeOutline(a, b) {
      percentBox(drawBox, Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y));
      drawBox.hidden = false;
    }

    function fillOutline(a, b) {
      var size = naturalSize();
      var box = {
        x0: Math.round(Math.min(a.x, b.x)), y0: Math.round(Math.min(a.y, b.y)),
        x1: Math.min(Math.round(size.w) - 1, Math.round(Math.max(a.x, b.x))),
        y1: Math.min(Math.round(size.h) - 1, Math.round(Math.max(a.y, b.y)))
      };
      if (box.x1 <= box.x0 || box.y1 <= box.y0) { clearBox(); return; }  // a click, not a drag
      Object.keys(box).forEach(function (name) { field(name).value = String(box[name]); });
      field("slice").value = String(index + 1);
    }

    // Measure: a line in image pixels; its length in mm from the pixel spacing (row, column).
    function hideMeasure() { if (line) { line.setAttribute("hidden", ""); } }

    function drawMeasure(a, b) {
      var size = naturalSize();
      svg.setAttribute("viewBox", "0 0 " + size.w + " " + size.h);
      line.setAttribute("x1", a.x); line.setAttribute("y1", a.y);
      line.setAttribute("x2", b.x); line.setAttribute("y2", b.y);
      line.removeAttribute("hidden");
      var rowMm = spacing[0] || 1, colMm = spacing[1] || rowMm;
      var mm = Math.sqrt(Math.pow((b.x - a.x) * colMm, 2) + Math.pow((b.y - a.y) * rowMm, 2));
      viewer.dataset.measuredMm = mm.toFixed(1);
      say(spacing[0] ? phrase("distance", "Distance: {distance} mm", { distance: mm.toFixed(1) })
        : phrase("distanceInPixels", "Distance: {distance} mm (pixel spacing unknown: pixels)", { distance: mm.toFixed(1) }));
    }

    // Window/level by drag: right-left changes the width, up-down the centre (HU).
    var levelTimer = null;
    function level(start, event) {
      var w = Math.max(1, Math.min(8000, start.w + (event.clientX - start.x) * 4));
      var c = Math.max(-2000, Math.min(4000, start.c + (event.clientY - start.y) * 2));
      custom = { c: c, w: w };
      say(phrase("level", "Window: centre {centre} HU, width {width} HU", { centre: Math.round(c), width: Math.round(w) }));
      if (!levelTimer) {
        levelTimer = window.setTimeout(function () { levelTimer = null; setWindow(preset, custom); }, 120);
      }
    }

    var drag = null;
    stage.addEventListener("pointerdown", function (event) {
      if (event.button !== 0 || !tool || tool === "boxes") { return; }
      if (tool === "outline" && (!addForm || viewer.dataset.canDraw !== "true")) { return; }
      event.preventDefault();
      stage.setPointerCapture(event.pointerId);
      var base = custom || presets[preset] || { c: -600, w: 1500 };
      drag = { tool: tool, x: event.clientX, y: event.clientY, tx: tx, ty: ty, c: base.c, w: base.w, p: imagePoint(event) };
      if (tool === "outline") { placeOutline(drag.p, drag.p); }
    });
    stage.addEventListener("pointermove", function (event) {
      if (!drag) { return; }
      if (drag.tool === "pan") {
        tx = drag.tx + event.clientX - drag.x;
        ty = drag.ty + event.clientY - drag.y;
        clampPan();
        applyView();
      } else if (drag.tool === "level") {
        level(drag, event);
      } else if (drag.tool === "measure") {
        drawMeasure(drag.p, imagePoint(event));
      } else if (drag.tool === "outline") {
        placeOutline(drag.p, imagePoint(event));
      }
    });
    function endDrag(event) {
      if (!drag) { return; }
      var done = drag;
      drag = null;
      if (done.tool === "outline") {
        var end = imagePoint(event);
        placeOutline(done.p, end);
        fillOutline(done.p, end);
      } else if (done.tool === "measure") {
        drawMeasure(done.p, imagePoint(event));
      } else if (done.tool === "level") {
        level(done, event);
        if (levelTimer) { window.clearTimeout(levelTimer); levelTimer = null; }
        setWindow(preset, custom);
      } else if (done.tool === "pan") {
        say(phrase("zoomPanned", "Zoom {percent}%, panned", { percent: Math.round(zoom * 100) }));
      }
    }
    stage.addEventListener("pointerup", endDrag);
    stage.addEventListener("pointercancel", function () { drag = null; clearBox(); });

    // Move or resize a finding's box ("Move box" tool): posts the finding's "edit the box" form.
    function renderBoxes() {
      if (!boxLayer) { return; }
      boxLayer.textContent = "";
      if (tool !== "boxes") { return; }
      document.querySelectorAll("section.finding[data-finding-id]").forEach(function (card) {
        if (card.dataset.rejected === "true" || parseInt(card.dataset.sliceIndex, 10) !== index) { return; }
        var form = document.getElementById("edit-box-" + card.dataset.findingId);
        if (!form) { return; }
        var coords = card.dataset.box.split(",").map(Number);
        var el = document.createElement("div");
        el.className = "finding-box";
        el.dataset.findingId = card.dataset.findingId;
        el.setAttribute("aria-hidden", "true");  // the form in the finding's card is the accessible way
        var text = document.createElement("span");
        text.textContent = card.dataset.label;
        var handle = document.createElement("div");
        handle.className = "handle";
        el.appendChild(text);
        el.appendChild(handle);
        percentBox(el, coords[0], coords[1], coords[2], coords[3]);
        boxLayer.appendChild(el);
        attachBoxDrag(el, handle, coords, form);
      });
    }

    function attachBoxDrag(el, handle, coords, form) {
      var start = null, box = coords.slice();
      el.addEventListener("pointerdown", function (event) {
        if (event.button !== 0) { return; }
        event.preventDefault();
        event.stopPropagation();
        el.setPointerCapture(event.pointerId);
        start = { p: imagePoint(event), resize: event.target === handle, box: box.slice() };
      });
      el.addEventListener("pointermove", function (event) {
        if (!start) { return; }
        var size = naturalSize(), p = imagePoint(event);
        var dx = p.x - start.p.x, dy = p.y - start.p.y, b = start.box;
        if (start.resize) {
          box = [b[0], b[1], Math.max(b[0] + 2, Math.min(size.w, b[2] + dx)), Math.max(b[1] + 2, Math.min(size.h, b[3] + dy))];
        } else {
          dx = Math.max(-b[0], Math.min(size.w - b[2], dx));
          dy = Math.max(-b[1], Math.min(size.h - b[3], dy));
          box = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
        }
        percentBox(el, box[0], box[1], box[2], box[3]);
      });
      el.addEventListener("pointerup", function () {
        if (!start) { return; }
        start = null;
        var rounded = box.map(Math.round);
        if (rounded.join(",") === coords.join(",")) { return; }  // a click, not a drag
        ["x0", "y0", "x1", "y1"].forEach(function (name, i) { form.querySelector("[name=" + name + "]").value = String(rounded[i]); });
        say(phrase("savingBox", "Saving the box of finding {id}: {box}", { id: el.dataset.findingId, box: rounded.join(", ") }));
        var submit = form.querySelector("button[name=decision][value=edited]");
        if (form.requestSubmit) { form.requestSubmit(submit); } else { submit.click(); }
      });
    }

    image.addEventListener("load", function () { renderBoxes(); });
    setTool(tools ? (viewer.dataset.canDraw === "true" && addForm ? "outline" : "pan") : null);
    show(index);
  }

  // The current study first, so a prior can listen to it.
  document.querySelectorAll(".slice-viewer[data-slice-url]:not([data-follows])").forEach(setup);
  document.querySelectorAll(".slice-viewer[data-slice-url][data-follows]").forEach(setup);
})();
