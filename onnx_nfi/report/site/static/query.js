// The query page of `onnx-nfi serve`: preview the chosen image, drag a box on it (in the image's own
// pixels), post the file's bytes and show the server's result tiles.
(function () {
  const form = document.getElementById("query-form");
  const file = document.getElementById("image");
  const preview = document.getElementById("preview");
  const mark = document.getElementById("box-mark");
  const boxField = document.getElementById("box");
  let start = null;

  file.addEventListener("change", () => {
    if (!file.files.length) return;
    preview.src = URL.createObjectURL(file.files[0]);
    preview.style.display = "block";
    mark.style.display = "none";
    boxField.value = "";
  });

  function point(event) {
    const r = preview.getBoundingClientRect();
    const x = Math.min(Math.max(event.clientX - r.left, 0), r.width);
    const y = Math.min(Math.max(event.clientY - r.top, 0), r.height);
    return { x, y, sx: preview.naturalWidth / r.width, sy: preview.naturalHeight / r.height };
  }

  function draw(a, b) {
    const x0 = Math.min(a.x, b.x), y0 = Math.min(a.y, b.y), x1 = Math.max(a.x, b.x), y1 = Math.max(a.y, b.y);
    Object.assign(mark.style, { left: x0 + "px", top: y0 + "px", width: (x1 - x0) + "px", height: (y1 - y0) + "px", display: "block" });
    boxField.value = [x0 * a.sx, y0 * a.sy, x1 * a.sx, y1 * a.sy].map((v) => Math.round(v)).join(",");
  }

  preview.addEventListener("mousedown", (e) => { start = point(e); e.preventDefault(); });
  window.addEventListener("mousemove", (e) => { if (start) draw(start, point(e)); });
  window.addEventListener("mouseup", (e) => { if (start) { draw(start, point(e)); start = null; } });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const results = document.getElementById("results");
    if (!file.files.length) { results.innerHTML = '<p class="error" id="error">Choose an image first.</p>'; return; }
    const params = new URLSearchParams({
      model: document.getElementById("model").value, k: document.getElementById("k").value,
      box: boxField.value, name: file.files[0].name,
    });
    results.innerHTML = '<p class="muted">Asking…</p>';
    const response = await fetch("/query?" + params, { method: "POST", body: file.files[0] });
    results.innerHTML = await response.text();
  });
})();
