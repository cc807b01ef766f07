// Word search of the static neuron browser: `onnx-nfi find` over the index in find-index.js
// (window.NFI_FIND, written by the report build). Same reading of words as the command: colour
// terms through colour names; nouns through the synsets' lemmas and every synset below them.
(function () {
  "use strict";
  var idx = window.NFI_FIND, q = new URLSearchParams(location.search).get("q") || "";
  var input = document.getElementById("find-q"), list = document.getElementById("find-results");
  var errorLine = document.getElementById("find-error"), none = document.getElementById("find-none");
  input.value = q;
  if (!idx || !q.trim()) return;
  var byLemma = new Map();
  idx.terms.forEach(function (lemmas, t) {
    lemmas.forEach(function (l) { if (!byLemma.has(l)) byLemma.set(l, []); byLemma.get(l).push(t); });
  });
  function norm(w) { return w.toLowerCase().replace(/[_-]/g, " ").split(/\s+/).filter(Boolean).join(" "); }
  var RULES = [["ses", "s"], ["xes", "x"], ["zes", "z"], ["ches", "ch"], ["shes", "sh"], ["men", "man"], ["ies", "y"], ["s", ""]];
  function synsets(w) {
    var forms = [w];
    RULES.forEach(function (r) { if (w.length > r[0].length + 1 && w.endsWith(r[0])) forms.push(w.slice(0, -r[0].length) + r[1]); });
    for (var i = 0; i < forms.length; i++) if (byLemma.has(forms[i])) return byLemma.get(forms[i]);
    return [];
  }
  function color(w) { w = idx.synonyms[w] || w; return idx.colors.indexOf(w); }
  var up = new Map();  // term -> itself and every term above it
  function above(t) {
    if (!up.has(t)) {
      var s = new Set([t]);
      idx.parents[t].forEach(function (p) { above(p).forEach(function (a) { s.add(a); }); });
      up.set(t, s);
    }
    return up.get(t);
  }
  function similarity(a, b) {  // 2 x longest common subsequence / total length (close to difflib's ratio)
    var prev = new Array(b.length + 1).fill(0), cur, i, j;
    for (i = 1; i <= a.length; i++) {
      cur = [0];
      for (j = 1; j <= b.length; j++) cur.push(a[i - 1] === b[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]));
      prev = cur;
    }
    return 2 * prev[b.length] / (a.length + b.length);
  }
  function closest(w) {
    return idx.colors.concat(Array.from(byLemma.keys()))
      .map(function (k) { return [similarity(w, k), k]; })
      .filter(function (p) { return p[0] >= 0.6; }).sort(function (a, b) { return b[0] - a[0]; })
      .slice(0, 3).map(function (p) { return p[1]; });
  }
  var words = norm(q).split(" "), terms = [];
  while (words.length) {
    var size = [3, 2].find(function (n) { return words.length >= n && synsets(words.slice(0, n).join(" ")).length; }) || 1;
    terms.push(words.slice(0, size).join(" "));
    words = words.slice(size);
  }
  var unknown = terms.filter(function (t) { return color(t) < 0 && !synsets(t).length; });
  if (unknown.length) {
    var near = closest(unknown[0]);
    errorLine.textContent = "'" + unknown[0] + "' is no colour term or concept in this report; " +
      (near.length ? "closest known: " + near.join(", ") : "try a colour term or a noun such as dog");
    errorLine.hidden = false;
    return;
  }
  var wanted = terms.map(function (t) { return { color: color(t), synsets: new Set(synsets(t)) }; });
  var hits = [];
  idx.neurons.forEach(function (n) {
    var score = 1;
    for (var i = 0; i < wanted.length && score > 0; i++) {
      var best = 0, w = wanted[i];
      n[4].forEach(function (c) { if (c[0] === w.color) best = Math.max(best, c[1]); });
      n[3].forEach(function (te) {
        for (var a of above(te[0])) if (w.synsets.has(a)) { best = Math.max(best, te[1]); break; }
      });
      score *= best;
    }
    if (score > 0) hits.push([score, n]);
  });
  hits.sort(function (a, b) { return b[0] - a[0]; });
  hits.slice(0, 50).forEach(function (h) {
    var n = h[1], layer = idx.layers[n[0]], li = document.createElement("li"), a = document.createElement("a");
    a.href = layer[2] + "/" + n[1] + "/index.html";
    a.textContent = layer[0] + ":" + layer[1] + ":" + n[1];
    var score = document.createElement("span"), text = document.createElement("span");
    score.className = "num"; score.textContent = " " + h[0].toFixed(1) + " ";
    text.className = "description"; text.textContent = n[2];
    li.append(a, score, text);
    list.append(li);
  });
  none.hidden = hits.length > 0;
}());
