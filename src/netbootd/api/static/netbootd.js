// netbootd's page, kept live: the journal's events arrive over server-sent events; each goes
// to the top of the feed, and the parts of the page it changes are fetched again as the server
// renders them (debounced). Text from the events is set as text, never as markup.
"use strict";
(function () {
  const body = document.body;
  const mac = body.dataset.mac || "";
  const feed = document.getElementById("feed");
  const live = document.getElementById("live");
  const parts = Array.from(document.querySelectorAll("[data-refresh]"));
  const FEED_MAX = 200;
  const DEBOUNCE_MS = 250;
  const REFRESH_MS = 15000; // a verdict can change with no event: quiet turns into stalled
  const seen = new Set();
  if (feed) {
    feed.querySelectorAll("li[data-id]").forEach((li) => seen.add(li.dataset.id));
  }

  let timer = null;
  let dhcp = false; // an event since the last refresh touched the leases
  function refresh(all) {
    timer = null;
    for (const part of parts) {
      if (!all && part.dataset.on === "dhcp" && !dhcp) continue;
      fetch(part.dataset.refresh, { headers: { Accept: "text/html" } })
        .then((r) => (r.ok ? r.text() : Promise.reject(new Error(String(r.status)))))
        .then((html) => {
          part.innerHTML = html; // the server's own rendering, escaped there
        })
        .catch(() => {});
    }
    dhcp = false;
  }
  function soon() {
    if (timer === null) timer = setTimeout(() => refresh(false), DEBOUNCE_MS);
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    const two = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
      `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }
  function size(text) {
    let value = Number(text);
    if (!isFinite(value)) return "";
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (value < 1024 || unit === "GiB") {
        return unit === "B" ? `${value.toFixed(0)} ${unit}` : `${value.toFixed(1)} ${unit}`;
      }
      value /= 1024;
    }
    return "";
  }
  // The same words as the server's describe() (api/web.py).
  function describe(e) {
    const f = e.fields || {};
    if (e.service === "dhcp") {
      const words = [e.kind, "->", f.decision || "nothing"];
      if (f.address && f.address !== "-") words.push(f.address);
      if (f.file) words.push(f.file);
      if (f.reason) words.push(`(${f.reason})`);
      return words.join(" ");
    }
    if (e.kind === "transfer") {
      const words = [f.file || "", f.result || ""];
      if (f.bytes) words.push(size(f.bytes));
      return words.filter((w) => w).join(" ");
    }
    return [e.kind, f.machine || ""].filter((w) => w).join(" ");
  }
  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }
  function add(e) {
    if (!feed || seen.has(String(e.id))) return;
    seen.add(String(e.id));
    const li = document.createElement("li");
    li.dataset.id = String(e.id);
    li.dataset.mac = e.mac || "";
    li.className = `${e.service} new`;
    const when = document.createElement("time");
    when.textContent = clock(e.time);
    li.append(when, " ");
    if (e.mac) {
      const a = document.createElement("a");
      a.className = "mac";
      a.href = `/ui/machines/${encodeURIComponent(e.mac)}`;
      a.textContent = e.mac;
      li.append(a);
    } else {
      li.append(span("mac", e.address || "-"));
    }
    li.append(" ", span("service", e.service), " ", span("what", describe(e)));
    feed.prepend(li);
    const empty = document.getElementById("feed-empty");
    if (empty) empty.remove();
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  if (!window.EventSource || !live || live.textContent === "journal off") return;
  const source = new EventSource(
    `/api/v1/events/stream?after=${encodeURIComponent(body.dataset.after || "0")}`);
  source.onopen = () => {
    live.textContent = "live";
    live.className = "live on";
  };
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  };
  source.onmessage = (message) => {
    let e;
    try {
      e = JSON.parse(message.data);
    } catch (err) {
      return;
    }
    if (mac && e.mac !== mac) return;
    add(e);
    if (e.service === "dhcp") dhcp = true;
    soon();
  };
  setInterval(() => refresh(true), REFRESH_MS);
})();
