// Long API names in the sidebars and in the titles of the API pages (pengster.dataloaders.DeviceMinibatchLoader) wrap
// after a "." or "_" instead of running under the sidebar: a <wbr> (a line-break opportunity) is put after each.
document.addEventListener("DOMContentLoaded", () => {
  const links = document.querySelectorAll(".bd-sidebar-primary a, .bd-sidebar-secondary a, .bd-article h1");
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
