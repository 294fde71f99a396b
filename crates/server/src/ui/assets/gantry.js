// Gantry's web UI script: live panels and forms that post without leaving the page.
// Pages work without it; with it, a panel marked data-live follows server-sent events
// and takes the HTML the server rendered, so there is no client-side template.
"use strict";

// An element marked data-live follows the server-sent events at that address: "panel"
// replaces the panel (the element marked data-panel inside it, or the element itself),
// "log" appends the next piece of a log the server rendered and escaped, "end" closes
// the stream (the browser would otherwise reconnect to a finished run).
function follow(root) {
  const source = new EventSource(root.dataset.live);
  const panel = root.querySelector("[data-panel]") || root;
  source.addEventListener("panel", (event) => swapPanel(panel, event.data));
  const log = root.querySelector("[data-log]");
  if (log) source.addEventListener("log", (event) => appendLog(log, event.data));
  source.addEventListener("end", () => source.close());
}

function swapPanel(panel, html) {
  // Keep keyboard focus on the same control across the swap.
  const focused = document.activeElement && panel.contains(document.activeElement)
    ? document.activeElement.id : "";
  panel.innerHTML = html;
  panel.dataset.updatedAt = String(Date.now());
  if (focused) {
    const again = document.getElementById(focused);
    if (again) again.focus();
  }
}

function appendLog(log, html) {
  // Follow the end of the log only when the reader is already there.
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.insertAdjacentHTML("beforeend", html);
  if (atEnd) log.scrollTop = log.scrollHeight;
}

// Copy buttons (hidden without this script) copy the text of the element they name.
function enableCopy(button) {
  button.hidden = false;
  button.addEventListener("click", async () => {
    const target = document.getElementById(button.dataset.copy);
    const label = button.textContent;
    try {
      await navigator.clipboard.writeText(target.textContent);
      button.textContent = "Copied";
    } catch (_) {
      window.getSelection().selectAllChildren(target);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { button.textContent = label; }, 2000);
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
document.querySelectorAll("[data-live]").forEach(follow);
document.querySelectorAll("button[data-copy]").forEach(enableCopy);
