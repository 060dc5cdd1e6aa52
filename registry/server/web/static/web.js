// Enhancement only: every page works without this file. Adds a "Copy" button to each usage
// snippet. Loaded from /static (the Content-Security-Policy allows no inline script).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".snippet pre").forEach(function (pre) {
    if (!navigator.clipboard) return;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy " + (pre.previousElementSibling ? pre.previousElementSibling.textContent : "snippet"));
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(pre.textContent).then(function () {
        button.textContent = "Copied";
      }, function () {
        button.textContent = "Select and copy";
      });
    });
    pre.parentNode.insertBefore(button, pre);
  });
});
