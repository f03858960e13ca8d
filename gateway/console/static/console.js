// Auto-refresh for the console: pending rows of the preheat list and the live part of a
// preheat's detail page. Plain DOM, no framework, no build step; the server renders the HTML.
"use strict";

(function () {
  const PERIOD_MS = 2000;

  function announce(text) {
    const region = document.getElementById("announce");
    if (region) region.textContent = text;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) throw new Error(response.status === 401 ? "signed out" : "HTTP " + response.status);
    return response.json();
  }

  function rowFromHTML(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.querySelector("tr");
  }

  // The list: ask for the pending rows only, swap in what changed, stop when none is pending.
  function refreshRows(table) {
    const tick = async () => {
      const pending = Array.from(table.querySelectorAll("tr[data-pending]"));
      if (pending.length === 0) return;
      const query = pending.map((row) => "id=" + encodeURIComponent(row.id.replace("job-", ""))).join("&");
      try {
        const body = await getJSON(table.dataset.refresh + "?" + query);
        for (const row of pending) {
          const html = body.rows[row.id.replace("job-", "")];
          if (html === undefined) { row.removeAttribute("data-pending"); continue; }
          const fresh = rowFromHTML(html);
          if (!fresh || fresh.outerHTML === row.outerHTML) continue;
          if (row.classList.contains("fresh")) fresh.classList.add("fresh");
          row.replaceWith(fresh);
          if (!fresh.hasAttribute("data-pending")) {
            announce("Preheat " + fresh.id.replace("job-", "") + " is now " + fresh.dataset.state + ".");
          }
        }
      } catch (error) {
        announce("Automatic refresh stopped (" + error.message + "); reload the page to continue.");
        return;
      }
      window.setTimeout(tick, PERIOD_MS);
    };
    window.setTimeout(tick, PERIOD_MS);
  }

  // The detail page: replace the status section until the preheat has finished.
  function refreshStatus(section) {
    let last = "";
    const tick = async () => {
      try {
        const body = await getJSON(section.dataset.refresh);
        if (body.html !== last) {
          const focused = document.activeElement && section.contains(document.activeElement);
          section.innerHTML = body.html;
          last = body.html;
          if (focused) section.focus();
        }
        if (body.finished) {
          section.removeAttribute("data-pending");
          announce("The preheat is now " + body.state + ".");
          return;
        }
      } catch (error) {
        announce("Automatic refresh stopped (" + error.message + "); reload the page to continue.");
        return;
      }
      window.setTimeout(tick, PERIOD_MS);
    };
    window.setTimeout(tick, PERIOD_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.querySelector("table.jobs[data-refresh]");
    if (table) refreshRows(table);
    const section = document.querySelector("#status[data-refresh]");
    if (section) {
      section.tabIndex = -1;
      refreshStatus(section);
    }
  });
})();
