// The result viewer (templates/_viewer.html): pointing at or focusing a field, in the list or on
// the image, highlights both the list item and the box with the same data-index. Listeners are
// delegated from the document, so they keep working after htmx swaps the viewer in or out.
// Enter or Space on a listed field scrolls its box into view.
(function () {
  "use strict";

  const ITEM = ".field[data-index], .box[data-index]";

  function itemOf(target) {
    if (!(target instanceof Element)) {
      return null;
    }
    const item = target.closest(ITEM);
    return item && item.closest("#result-viewer") ? item : null;
  }

  function partsOf(item) {
    const viewer = item.closest("#result-viewer");
    const index = item.getAttribute("data-index");
    if (!/^\d+$/.test(index)) {
      return [];
    }
    return Array.prototype.slice.call(viewer.querySelectorAll('[data-index="' + index + '"]'));
  }

  function mark(item, on) {
    partsOf(item).forEach(function (part) {
      part.classList.toggle("highlight", on);
    });
  }

  // Moving between an item and its own children fires out/over pairs; only leaving the item counts.
  function enter(event) {
    const item = itemOf(event.target);
    if (item && !(event.relatedTarget instanceof Node && item.contains(event.relatedTarget))) {
      mark(item, true);
    }
  }

  function leave(event) {
    const item = itemOf(event.target);
    if (item && !(event.relatedTarget instanceof Node && item.contains(event.relatedTarget))) {
      mark(item, false);
    }
  }

  function press(event) {
    if (event.key !== "Enter" && event.key !== " ") {
      return;
    }
    const item = itemOf(event.target);
    if (!item || !item.classList.contains("field")) {
      return;
    }
    const box = partsOf(item).filter(function (part) {
      return part.classList.contains("box");
    })[0];
    if (box) {
      event.preventDefault();
      box.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  document.addEventListener("mouseover", enter);
  document.addEventListener("mouseout", leave);
  document.addEventListener("focusin", enter);
  document.addEventListener("focusout", leave);
  document.addEventListener("keydown", press);
})();
