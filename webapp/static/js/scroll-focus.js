// A region that scrolls (a wide table on a phone, a long log or model card) can be scrolled from the keyboard only
// when it can take focus (WCAG 2.1.1; axe-core's scrollable-region-focusable rule). Give each such region
// tabindex="0" once it scrolls: on load, after every htmx swap (the polling status panels) and on resize.
(function () {
  "use strict";

  function markScrollingRegions(root) {
    for (const region of root.querySelectorAll("table, pre")) {
      const scrolls = region.scrollWidth > region.clientWidth || region.scrollHeight > region.clientHeight;
      if (scrolls && !region.hasAttribute("tabindex")) {
        region.setAttribute("tabindex", "0");
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => markScrollingRegions(document));
  document.addEventListener("htmx:afterSettle", (event) => markScrollingRegions(event.detail.elt || document));
  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => markScrollingRegions(document), 200);
  });
})();
