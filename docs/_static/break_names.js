// Long API names in the sidebars (pengster.datasets.pbmc_cite_mosaic) wrap after a "." or "_" instead of in the
// middle of a word: a <wbr> (a line-break opportunity) is put after each of them in the sidebars' link texts.
document.addEventListener("DOMContentLoaded", () => {
  const links = document.querySelectorAll(".bd-sidebar-primary a, .bd-sidebar-secondary a");
  for (const link of links) {
    const walker = document.createTreeWalker(link, NodeFilter.SHOW_TEXT);
    const texts = [];
    while (walker.nextNode()) texts.push(walker.currentNode);
    for (const text of texts) {
      const parts = text.textContent.split(/(?<=[._])/);
      if (parts.length < 2) continue;
      const fragment = document.createDocumentFragment();
      parts.forEach((part, i) => {
        fragment.append(part);
        if (i < parts.length - 1) fragment.append(document.createElement("wbr"));
      });
      text.replaceWith(fragment);
    }
  }
});
