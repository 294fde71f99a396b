// Gantry's web UI script: live panels and forms that post without leaving the page.
// Pages work without it; with it, a panel marked data-live follows server-sent events
// and takes the HTML the server rendered, so there is no client-side template.
"use strict";

function followPanel(panel) {
  const source = new EventSource(panel.dataset.live);
  source.addEventListener("panel", (event) => {
    // Keep keyboard focus on the same control across the swap.
    const focused = document.activeElement && panel.contains(document.activeElement)
      ? document.activeElement.id : "";
    panel.innerHTML = event.data;
    panel.dataset.updatedAt = String(Date.now());
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
  });
}

// A form marked data-enhance posts in the background when its panel is live: the
// change comes back through the panel's events. Failures fall back to a real post, so
// the server's error page explains them.
async function postInBackground(event) {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-enhance")) return;
  if (!form.closest("[data-live]")) return;
  event.preventDefault();
  const button = form.querySelector("button");
  if (button) button.disabled = true;
  try {
    const response = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
      redirect: "manual",
    });
    if (response.type !== "opaqueredirect" && !response.ok) form.submit();
  } catch (_) {
    form.submit();
  } finally {
    if (button) button.disabled = false;
  }
}

document.addEventListener("submit", postInBackground);
document.querySelectorAll("[data-live]").forEach(followPanel);
