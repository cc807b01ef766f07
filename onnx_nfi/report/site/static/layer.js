// Sorting and filtering of a layer's unit grid. The data are the tiles' own data-* attributes
// (this layer's units only), so the page works from file:// with no request.
(function () {
  "use strict";
  const grid = document.getElementById("grid");
  const tiles = Array.from(grid.children);
  const $ = (id) => document.getElementById(id);
  const sort = $("sort"), desc = $("desc"), hideDead = $("hide-dead"), klass = $("class"), includeWeak = $("include-weak");
  const minCol = $("min-col"), minVal = $("min-val"), shown = $("shown");
  const concept = $("concept"), color = $("color");  // present where the layer has concept labels / top colours
  const matches = (select, value) => !select || select.value === "" || value === select.value;

  function number(tile, column) {
    const text = column === "unit" ? tile.dataset.unit : tile.getAttribute("data-" + column);
    return text === null || text === "" ? NaN : parseFloat(text);
  }

  function format(value) {
    if (Number.isNaN(value)) return "";
    return Math.abs(value) >= 1000 ? value.toPrecision(4) : value.toFixed(3);
  }

  function apply() {
    const column = sort.value, sign = desc.checked ? -1 : 1;
    const sorted = tiles.slice().sort((a, b) => {
      const va = number(a, column), vb = number(b, column);
      const na = Number.isNaN(va), nb = Number.isNaN(vb);
      if (na || nb) return na === nb ? number(a, "unit") - number(b, "unit") : (na ? 1 : -1); // no value: last
      return va === vb ? number(a, "unit") - number(b, "unit") : sign * (va - vb);
    });
    const threshold = minVal.value === "" ? NaN : parseFloat(minVal.value);
    let visible = 0;
    for (const tile of sorted) {
      const keep = !(hideDead.checked && tile.dataset.dead === "1")
        && !(column !== "unit" && !includeWeak.checked && tile.dataset.weak === "1")  // weak units: out of rankings
        && (klass.value === "" || tile.dataset.class === klass.value)
        && matches(concept, tile.dataset.concept) && matches(color, tile.dataset.color)
        && (Number.isNaN(threshold) || number(tile, minCol.value) >= threshold);
      tile.hidden = !keep;
      visible += keep ? 1 : 0;
      tile.querySelector(".val").textContent = column === "unit" ? "" : format(number(tile, column));
      grid.appendChild(tile);
    }
    shown.textContent = visible + " of " + tiles.length + " units";
  }

  sort.addEventListener("change", () => { desc.checked = sort.value !== "unit"; apply(); });
  for (const control of [desc, hideDead, includeWeak, klass, minCol, concept, color]) if (control) control.addEventListener("change", apply);
  minVal.addEventListener("input", apply);
  apply();
})();
