// Typeset the TeX that pymdownx.arithmatex (generic mode) leaves in the page: inline spans
// <span class="arithmatex">\(...\)</span> and display blocks <div class="arithmatex">\[...\]</div>.
// KaTeX is served from this site (javascripts/katex); nothing is fetched from elsewhere.
// mkdocs-material's document$ fires on every page load, including instant navigation.
function typesetMath(root) {
  for (const el of root.querySelectorAll(".arithmatex")) {
    if (el.dataset.typeset) continue;
    const tex = el.textContent.trim();
    const display = tex.startsWith("\\[");
    const body = tex.replace(/^\\[\[(]/, "").replace(/\\[\])]$/, "");
    katex.render(body, el, { displayMode: display, throwOnError: false, strict: "ignore", output: "htmlAndMathml" });
    el.dataset.typeset = "1";
  }
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => typesetMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => typesetMath(document.body));
}
