// The orch dashboard: one page of the fleet over server-sent events, a detail panel per
// instance (charts, events, log) and the action buttons. No dependencies, no build step.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const view = { offset: 0, limit: 100, q: "", state: "" };
  const rows = new Map();  // name -> <tr>
  let source = null, selected = null, detailTimer = null, lastPage = null, filterTimer = null;
  const FEED_MAX = 200;

  // --- formatting --------------------------------------------------------------
  function size(bytes) {
    if (bytes === null || bytes === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(bytes < 10 ? 1 : 0) : bytes) + " " + units[i];
  }
  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60 ? (s % 60) + "s" : "");
    if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }
  function clock(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function toast(text) {
    const t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 3000);
  }

  // --- the live feed -------------------------------------------------------------
  function connect() {
    if (source) source.close();
    const q = new URLSearchParams({ offset: view.offset, limit: view.limit, q: view.q, state: view.state });
    source = new EventSource("/api/stream?" + q);
    source.addEventListener("page", (e) => render(JSON.parse(e.data)));
    source.addEventListener("row", (e) => {
      const r = JSON.parse(e.data), tr = rows.get(r.name);
      if (tr) fill(tr, r);
      if (tr && r.name === selected) facts(r);
    });
    source.addEventListener("journal", (e) => JSON.parse(e.data).forEach(addEvent));
    source.addEventListener("dropped", (e) => { $("dropped").textContent = "(" + e.data + " not shown: the page fell behind)"; });
    source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn on"; };
    source.onerror = () => {
      const closed = source.readyState === EventSource.CLOSED;
      $("conn").textContent = closed ? "disconnected (open the address orch dashboard prints)" : "reconnecting";
      $("conn").className = "conn off";
    };
  }

  const CELLS = ["name", "template", "state", "pid", "restarts", "cpu", "rss", "uptime", "last_exit"];
  function cellText(r, key) {
    switch (key) {
      case "state": return r.held && r.state !== "stopped" ? r.state + " (held)" : r.state;
      case "cpu": return r.cpu === null ? "" : r.cpu.toFixed(1) + "%";
      case "rss": return size(r.rss);
      case "uptime": return duration(r.uptime);
      case "pid": return r.pid === null ? "" : String(r.pid);
      default: return r[key] === null || r[key] === undefined ? "" : String(r[key]);
    }
  }
  function makeRow(r) {
    const tr = el("tr");
    tr.dataset.name = r.name;
    CELLS.forEach((key) => {
      const td = el("td", key + (["pid", "restarts", "cpu", "rss", "uptime"].includes(key) ? " n" : ""));
      if (key === "last_exit") td.className = "exit";
      tr.appendChild(td);
    });
    const act = el("td", "act");
    ["start", "stop", "restart"].forEach((a) => {
      const b = el("button", "", a);
      b.type = "button";
      b.dataset.action = a;
      act.appendChild(b);
    });
    tr.appendChild(act);
    return tr;
  }
  function fill(tr, r) {
    CELLS.forEach((key, i) => {
      const td = tr.children[i], text = cellText(r, key);
      if (td.textContent !== text) td.textContent = text;
    });
    const st = tr.children[2], cls = "state st st-" + r.state;
    if (st.className !== cls) st.className = cls;
    tr.dataset.state = r.state;
    tr.dataset.pid = r.pid === null ? "" : String(r.pid);
    tr.classList.toggle("sel", r.name === selected);
  }
  function render(page) {
    lastPage = page;
    const body = $("rows"), seen = new Set();
    page.rows.forEach((r, i) => {
      let tr = rows.get(r.name);
      if (!tr) { tr = makeRow(r); rows.set(r.name, tr); }
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
      fill(tr, r);
      seen.add(r.name);
    });
    for (const [name, tr] of rows) if (!seen.has(name)) { tr.remove(); rows.delete(name); }
    const first = page.total ? page.offset + 1 : 0, last = Math.min(page.total, page.offset + page.rows.length);
    $("range").textContent = first + "–" + last + " of " + page.total;
    $("prev").disabled = page.offset === 0;
    $("next").disabled = last >= page.total;
    const summary = $("summary");
    summary.textContent = "";
    summary.appendChild(el("span", "", page.fleet + " instances"));
    Object.keys(page.counts).sort().forEach((s) => summary.appendChild(el("span", "st st-" + s, page.counts[s] + " " + s)));
    if (selected) {
      const r = page.rows.find((x) => x.name === selected);
      if (r) facts(r);
    }
  }

  // --- events --------------------------------------------------------------------
  const SKIP = new Set(["ts", "seq", "kind", "instance", "template", "old", "new"]);
  function eventItem(r, withName) {
    const li = el("li");
    li.appendChild(el("span", "t", clock(r.ts)));
    li.appendChild(el("span", "k k-" + r.kind, r.kind));
    const parts = [];
    if (withName && r.instance) parts.push(r.instance);
    else if (withName && r.template) parts.push("template " + r.template);
    if (r.old && r.new) parts.push(r.old + " → " + r.new);
    Object.keys(r).forEach((k) => {
      if (SKIP.has(k) || r[k] === null || r[k] === "" || r[k] === undefined) return;
      if ((k === "code" || k === "signal") && r.exit) return;  // "exit 1", "SIGKILL" say it
      parts.push(k === "exit" ? r[k] : k + "=" + (typeof r[k] === "object" ? JSON.stringify(r[k]) : r[k]));
    });
    li.appendChild(document.createTextNode(parts.join("  ")));
    return li;
  }
  function addEvent(r) {
    const feed = $("feed");
    feed.insertBefore(eventItem(r, true), feed.firstChild);
    while (feed.children.length > FEED_MAX) feed.lastChild.remove();
    if (selected && r.instance === selected) {
      const d = $("d-events");
      d.insertBefore(eventItem(r, false), d.firstChild);
    }
  }

  // --- actions -------------------------------------------------------------------
  async function act(action, scope, value) {
    try {
      const res = await fetch("/api/" + action + "?" + new URLSearchParams({ [scope]: value }),
                              { method: "POST", credentials: "same-origin" });
      const body = await res.json().catch(() => ({}));
      toast(res.ok ? action + ": " + body.instances.length + " instance(s)" : (body.error || res.status + " " + res.statusText));
    } catch (err) {
      toast(action + " failed: " + err);
    }
  }

  // --- the detail panel --------------------------------------------------------
  function facts(r) {
    const f = $("d-facts");
    f.textContent = "";
    [["state", r.state], ["pid", r.pid], ["restarts", r.restarts], ["CPU", r.cpu === null ? "" : r.cpu + "%"],
     ["memory", size(r.rss)], ["uptime", duration(r.uptime)], ["last exit", r.last_exit]].forEach(([k, v]) => {
      const s = el("span", "", k + " ");
      s.appendChild(el("b", "", v === null || v === undefined ? "–" : String(v)));
      f.appendChild(s);
    });
  }
  function chart(canvas, ts, values, fmt, marks) {
    const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 2;
    ctx.clearRect(0, 0, w, h);
    // the last hour, or the last 10 minutes while the samples cover less
    const now = Date.now() / 1000, span = Math.min(3600, Math.max(600, ts.length ? now - ts[0] + 20 : 3600));
    const max = Math.max(1e-9, ...values.filter((v) => v !== null));
    ctx.strokeStyle = "#e3e4e6";
    ctx.beginPath(); ctx.moveTo(0, pad); ctx.lineTo(w, pad); ctx.moveTo(0, h / 2); ctx.lineTo(w, h / 2); ctx.stroke();
    ctx.strokeStyle = "#2463b4"; ctx.fillStyle = "rgba(36,99,180,0.12)"; ctx.lineWidth = 1.5;
    let open = false, startX = 0, lastX = 0;
    ctx.beginPath();
    const close = () => { if (open) { ctx.stroke(); ctx.lineTo(lastX, h); ctx.lineTo(startX, h); ctx.fill(); ctx.beginPath(); open = false; } };
    ts.forEach((t, i) => {
      const v = values[i], x = w - ((now - t) / span) * w;
      if (v === null || x < 0) { close(); return; }
      const y = h - pad - (v / max) * (h - 2 * pad);
      if (!open) { ctx.moveTo(x, y); startX = x; open = true; } else ctx.lineTo(x, y);
      lastX = x;
    });
    close();
    ctx.strokeStyle = "#c0392b"; ctx.lineWidth = 1;  // exits and limit actions: why a line drops
    (marks || []).forEach((t) => {
      const x = Math.round(w - ((now - t) / span) * w) + 0.5;
      if (x >= 0) { ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke(); }
    });
    ctx.fillStyle = "#6b7075"; ctx.font = "10px system-ui";
    ctx.fillText(values.length ? "max " + fmt(max) : "no samples yet", 4, 12);
    ctx.fillText("-" + (span >= 3600 ? "1h" : Math.round(span / 60) + "m"), 4, h - 4); ctx.fillText("now", w - 22, h - 4);
  }
  async function getJSON(url) {
    const res = await fetch(url, { credentials: "same-origin" });
    if (!res.ok) throw new Error(res.status + " " + ((await res.json().catch(() => ({}))).error || res.statusText));
    return res.json();
  }
  async function loadDetail() {
    const name = selected;
    if (!name) return;
    try {
      const d = await getJSON("/api/instance?name=" + encodeURIComponent(name));
      if (name !== selected) return;
      $("d-template").textContent = d.row.template;
      facts(d.row);
      const hist = d.history;
      const marks = d.events.filter((r) => ["exited", "stopped", "limit", "crashloop"].includes(r.kind)).map((r) => r.ts);
      chart($("c-cpu"), hist.ts, hist.cpu, (v) => v.toFixed(1) + "%", marks);
      chart($("c-rss"), hist.ts, hist.rss, size, marks);
      const lastCpu = hist.cpu.length ? hist.cpu[hist.cpu.length - 1] : null;
      $("d-cpu-now").textContent = lastCpu === null ? "" : "(" + lastCpu.toFixed(1) + "% at the last sample, every " + d.step + "s)";
      const lastRss = hist.rss.length ? hist.rss[hist.rss.length - 1] : null;
      $("d-rss-now").textContent = lastRss === null ? "" : "(" + size(lastRss) + ")";
      const ev = $("d-events");
      ev.textContent = "";
      d.events.slice().reverse().forEach((r) => ev.appendChild(eventItem(r, false)));
      if (!d.events.length) ev.appendChild(el("li", "t", "none kept"));
      const log = await getJSON("/api/log?" + new URLSearchParams({ name, lines: 200, stderr: $("d-stderr").checked ? 1 : 0 }));
      if (name !== selected) return;
      const pre = $("d-log"), atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = log.lines.length ? log.lines.join("\n") : "(no output yet)";
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    } catch (err) {
      $("d-log").textContent = String(err);
    }
  }
  function select(name) {
    selected = name;
    $("detail").hidden = !name;
    $("d-name").textContent = name || "";
    for (const [n, tr] of rows) tr.classList.toggle("sel", n === name);
    clearInterval(detailTimer);
    if (name) { loadDetail(); detailTimer = setInterval(loadDetail, 5000); }
  }

  // --- wiring ----------------------------------------------------------------------
  $("rows").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (!tr) return;
    const button = e.target.closest("button");
    if (button) act(button.dataset.action, "name", tr.dataset.name);
    else select(tr.dataset.name);
  });
  document.querySelectorAll("#detail .buttons button").forEach((b) =>
    b.addEventListener("click", () => act(b.dataset.action, "template", $("d-template").textContent)));
  $("d-close").addEventListener("click", () => select(null));
  $("d-stderr").addEventListener("change", loadDetail);
  $("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - view.limit); connect(); });
  $("next").addEventListener("click", () => { view.offset += view.limit; connect(); });
  $("size").addEventListener("change", () => { view.limit = Number($("size").value); view.offset = 0; connect(); });
  $("state").addEventListener("change", () => { view.state = $("state").value; view.offset = 0; connect(); });
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => { view.q = $("filter").value.trim(); view.offset = 0; connect(); }, 250);
  });
  connect();
})();
