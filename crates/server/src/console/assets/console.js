// The Ignite console's only script: it follows a running compile's log (the API's NDJSON
// stream) and sends the invoke box without leaving the page. Every page works without it.
"use strict";

async function followBuildLog(pre) {
  const badge = document.getElementById("build-status");
  const setStatus = (status, error) => {
    pre.dataset.status = status;
    if (badge) {
      badge.dataset.status = status;
      const span = document.createElement("span");
      span.className = "badge " + (status === "compiled" ? "good" : status === "compiling" ? "busy" : "bad");
      span.textContent = status + (error ? " — " + error : "");
      badge.replaceChildren(span);
    }
  };
  let response;
  try {
    response = await fetch(pre.dataset.follow, { credentials: "same-origin" });
  } catch (e) {
    return;
  }
  if (!response.ok || !response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const text = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (!text.trim()) continue;
      let event;
      try { event = JSON.parse(text); } catch (e) { continue; }
      if (typeof event.line === "string") {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(event.line + "\n");
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      } else if (event.status) {
        setStatus(event.status === "succeeded" ? "compiled" : event.status, event.error);
      }
    }
  }
}

function enhanceInvoke(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = document.getElementById("invoke-result");
    const button = form.querySelector("button");
    button.disabled = true;
    result.textContent = "Sending…";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(form)),
      });
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("invoke-result") || page.querySelector("main");
      result.replaceChildren(...fresh.childNodes);
    } catch (e) {
      result.textContent = "The console could not reach the server: " + e;
    } finally {
      button.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("build-log");
  if (log && log.dataset.follow) followBuildLog(log);
  const invoke = document.getElementById("invoke-form");
  if (invoke) enhanceInvoke(invoke);
});
