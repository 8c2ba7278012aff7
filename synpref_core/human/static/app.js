// synpref human verification: keyboard shortcuts, time on item, copy-to-LLM.
// Served by the app itself; the Content-Security-Policy allows no inline script.
"use strict";

(function () {
  const form = document.getElementById("verdict-form");
  const seconds = document.getElementById("seconds");

  // Time on item: only while the page is visible.
  let visibleMs = 0;
  let since = document.visibilityState === "visible" ? performance.now() : null;
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") {
      since = performance.now();
    } else if (since !== null) {
      visibleMs += performance.now() - since;
      since = null;
    }
  });
  function elapsedSeconds() {
    const running = since === null ? 0 : performance.now() - since;
    return ((visibleMs + running) / 1000).toFixed(1);
  }
  if (form && seconds) {
    form.addEventListener("submit", function () { seconds.value = elapsedSeconds(); });
  }

  // Keyboard: 1 / 2 / 3 pick the verdict, Enter submits, n / p move (not while typing).
  const keys = { "1": "v-first", "2": "v-second", "3": "v-undecidable" };
  document.addEventListener("keydown", function (event) {
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "textarea" || (tag === "input" && event.target.type !== "radio" &&
        event.target.type !== "checkbox") || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    if (keys[event.key] && form) {
      document.getElementById(keys[event.key]).checked = true;
      event.preventDefault();
    } else if (event.key === "Enter" && form) {
      if (form.querySelector("input[name=verdict]:checked")) {
        event.preventDefault();
        form.requestSubmit();  // runs the submit handler, which records the time on item
      }
    } else if (event.key === "n" || event.key === "p") {
      const link = document.getElementById(event.key === "n" ? "next" : "prev");
      if (link) { window.location.href = link.href; }
    }
  });

  // Copy the item (as plain text) for an LLM assistant; the annotator decides themselves.
  const copy = document.getElementById("copy-llm");
  if (copy) {
    copy.addEventListener("click", function () {
      const text = (id) => (document.getElementById(id) || {}).innerText || "";
      const prompt = [
        "Help me compare two responses to a conversation. Explain the strengths and",
        "weaknesses of each against the guideline; I will decide myself.",
        "", "## Conversation", text("conversation"),
        "", "## Response 1", text("first"), "", "## Response 2", text("second"),
        "", "## Guideline", text("guideline"),
      ].join("\n");
      const done = () => { document.getElementById("copied").textContent = "copied"; };
      if (navigator.clipboard) {
        navigator.clipboard.writeText(prompt).then(done, function () {
          document.getElementById("copied").textContent = "copy failed: select the text by hand";
        });
      }
    });
  }
})();
