// colo's dashboard: one page, hash routes (#/world, #/apps, #/apps/NAME, #/machines, #/models,
// #/models/NAME), data from /v1/ui/... with the API token, live over server-sent events.
// Everything is built with DOM calls (no HTML strings), so nothing a record holds is ever
// parsed as markup.
"use strict";

const colo = (window.colo = { snap: null, models: null, plans: {}, logs: {}, rates: {}, tokenRates: {}, byteRates: {}, flowRates: {}, sims: null, simFiles: {}, renderMs: null });
const SVG = "http://www.w3.org/2000/svg";
const MAX_ROWS = 500;

// --- the token: taken from #token=..., kept in this tab only, never shown ---
function takeToken() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (!m) return false;
  sessionStorage.setItem("colo-token", decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + "#/world");
  return true;
}
takeToken();
const token = () => sessionStorage.getItem("colo-token");

function h(tag, attrs, ...children) {
  const el = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "text") el.textContent = v;
    else if (k === "width%") el.style.width = v + "%";
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = {
  usd: (x) => (x === null || x === undefined ? "–" : x === 0 || x >= 0.01 ? "$" + x.toFixed(x < 10 ? 2 : 0) : "$" + x.toPrecision(3)),
  ms: (x) => (x === null || x === undefined ? "–" : x < 1000 ? x + " ms" : (x / 1000).toFixed(1) + " s"),
  bytes: (n) => {
    if (!n) return "0 B";
    const u = ["B", "KB", "MB", "GB", "TB"];
    const i = Math.min(u.length - 1, Math.floor(Math.log10(n) / 3));
    return (n / 10 ** (3 * i)).toFixed(i ? 1 : 0) + " " + u[i];
  },
  num: (x, d = 0) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en", { maximumFractionDigits: d })),
};

function status(text) {
  document.getElementById("status").textContent = text;
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (r.status === 401 || r.status === 403) {
    showLogin("That token was not accepted.");
    throw new Error("unauthorized");
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status + " " + (await r.text()));
  return r.json();
}

function showLogin(problem) {
  sessionStorage.removeItem("colo-token");
  document.getElementById("main").hidden = true;
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-error").textContent = problem || "";
  document.getElementById("token").focus();
  status("signed out");
}

document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem("colo-token", input.value.trim());
  input.value = "";
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  start();
});

// --- live data: /v1/ui/events, read as a stream so the token travels in a header ---
async function listen() {
  for (let backoff = 500; ; backoff = Math.min(backoff * 2, 8000)) {
    try {
      const r = await fetch("/v1/ui/events", { headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" } });
      if (r.status === 401 || r.status === 403) return showLogin("That token was not accepted.");
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      status("live");
      backoff = 500;
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (event === "snapshot" && data.length) {
            const next = JSON.parse(data.join("\n"));
            noteRates(colo.snap, next);
            colo.snap = next;
            render();
          } else if (event === "problem") {
            status("colo: " + data.join(" "));
          }
        }
      }
    } catch (e) {
      if (e.message === "unauthorized") return;
    }
    status("reconnecting");
    await new Promise((ok) => setTimeout(ok, backoff));
  }
}

// --- pages ---
function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "world").split("/").map(decodeURIComponent);
  return { page: parts[0] || "world", arg: parts[1] };
}

function render() {
  const t0 = performance.now();
  const { page, arg } = route();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  // A live update rebuilds the page: whatever had the keyboard's focus gets it back, found by
  // its id or by where it leads and what it says.
  const active = document.activeElement;
  const keep = active && active !== main && main.contains(active) ? focusKey(active) : null;
  const view = colo.snap ? (pages[page] || pages.world)(colo.snap, arg) : h("p", { class: "muted", text: "Loading…" });
  main.replaceChildren(view);
  if (keep) {
    const again = [...main.querySelectorAll("a, input, button, [tabindex]")].find((el) => focusKey(el) === keep);
    if (again) {
      again.focus({ preventScroll: true });
      if (again.setSelectionRange && again.value !== undefined) again.setSelectionRange(again.value.length, again.value.length);
    }
  }
  colo.renderMs = performance.now() - t0;
}

function focusKey(el) {
  return el.id || [el.tagName, el.getAttribute("href"), el.getAttribute("aria-label"), el.textContent].join("|");
}

// Requests and tokens per second of each app, and requests per second between regions, from
// two snapshots that carry the edges' counters.
function noteRates(prev, next) {
  if (!prev || !prev.traffic || !next.traffic || next.now_ms <= prev.now_ms) return;
  const secs = (next.now_ms - prev.now_ms) / 1000;
  const per = (now, before) => Math.max(0, now - (before || 0)) / secs;
  for (const [app, t] of Object.entries(next.traffic)) {
    const before = prev.traffic[app] || {};
    colo.rates[app] = per(t.requests, before.requests);
    colo.tokenRates[app] = per(t.output_tokens, before.output_tokens);
    colo.byteRates[app] = per(t.response_bytes, before.response_bytes);
  }
  const earlier = Object.fromEntries((prev.flows || []).map((f) => [f.from + ">" + f.to, f.requests]));
  colo.flowRates = Object.fromEntries((next.flows || []).map((f) => [f.from + ">" + f.to, per(f.requests, earlier[f.from + ">" + f.to])]));
}

// The upper bound of the bucket that holds quantile q of the requests, in ms.
function quantileMs(buckets, q) {
  if (!buckets || !buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!total) return null;
  const hit = buckets.find(([, n]) => n >= q * total);
  return hit && Number.isFinite(hit[0]) ? Math.round(hit[0] * 1000) : Infinity;
}

// An app's traffic as the pages show it: rates, percentiles, errors, and $ per million tokens
// (its cost an hour now over the tokens it generated in the last update).
function traffic(snap, a) {
  const t = snap.traffic && snap.traffic[a.name];
  if (!t) return null;
  const ms = (buckets, q) => {
    const v = quantileMs(buckets, q);
    return v === null ? "–" : v === Infinity ? "> 65 s" : "≤ " + fmt.ms(v);
  };
  const per = (x) => (x === undefined ? "–" : x.toFixed(x < 10 ? 2 : 0));
  const rate = colo.rates[a.name];
  const tokens = colo.tokenRates[a.name];
  const perMtok = a.usd_per_hour && tokens > 0 ? a.usd_per_hour / ((tokens * 3600) / 1e6) : null;
  return {
    rate: per(rate),
    p50: ms(t.latency_buckets, 0.5),
    p99: ms(t.latency_buckets, 0.99),
    ttft50: ms(t.first_token_buckets, 0.5),
    ttft99: ms(t.first_token_buckets, 0.99),
    tokens: per(tokens),
    perMtok: fmt.usd(perMtok),
    egress: `${fmt.bytes(t.response_bytes)} (${fmt.bytes(colo.byteRates[a.name] || 0)}/s)`,
    errors: t.client_errors + t.server_errors,
    t,
  };
}

// A report file of a simulation, fetched with the token: text, or an object URL of a plot.
function simFile(name, file) {
  const key = name + "/" + file;
  if (!(key in colo.simFiles)) {
    colo.simFiles[key] = null;
    fetch(`/v1/ui/sims/${encodeURIComponent(name)}/${encodeURIComponent(file)}`, { headers: { Authorization: "Bearer " + token() } })
      .then(async (r) => {
        if (!r.ok) throw new Error("HTTP " + r.status);
        colo.simFiles[key] = file.endsWith(".svg") ? URL.createObjectURL(await r.blob()) : await r.text();
      })
      .catch((e) => (colo.simFiles[key] = { error: e.message }))
      .then(render);
  }
  return colo.simFiles[key];
}

function simsPage(name) {
  if (!colo.sims) {
    api("/v1/ui/sims").then((s) => ((colo.sims = s), render()), (e) => status(e.message));
    return h("p", { class: "muted", text: "Loading simulations…" });
  }
  const chosen = colo.sims.find((s) => s.name === name);
  return h(
    "section",
    {},
    h("h1", { text: "Simulations" }),
    colo.sims.length
      ? table(
          ["report", "written", "plots"],
          colo.sims.map((s) => [
            h("a", { href: "#/sims/" + encodeURIComponent(s.name), text: s.name }),
            new Date(s.modified_ms).toISOString().replace("T", " ").slice(0, 16),
            String(s.files.filter((f) => f.endsWith(".svg")).length),
          ]),
          [2],
        )
      : h("p", { class: "muted", text: "No reports yet: colo sim SCENARIO.toml --out DATA_DIR/sims/NAME writes one here." }),
    chosen ? simReport(chosen) : null,
  );
}

function simReport(sim) {
  const text = simFile(sim.name, "report.txt");
  return h(
    "section",
    { "aria-label": "Simulation " + sim.name },
    h("h2", { text: sim.name }),
    sim.files.filter((f) => f.endsWith(".svg")).map((f) => {
      const url = simFile(sim.name, f);
      return typeof url === "string" ? h("img", { class: "plot", src: url, alt: `${sim.name}: ${f.replace(".svg", "")}` }) : null;
    }),
    typeof text === "string" ? h("pre", { class: "report", tabindex: 0, "aria-label": "Report", text }) : h("p", { class: "muted", text: "Loading the report…" }),
  );
}

// The Apps table's columns of an app's record.
function appRow(a) {
  return [
    h("a", { href: "#/apps/" + encodeURIComponent(a.name), text: a.name, id: "app-" + a.name }),
    `${a.model}@${a.revision.slice(0, 8)}`,
    a.engine,
    a.gpu_kind ? (a.gpus_per_machine > 1 ? `${a.gpu_kind} ×${a.gpus_per_machine}` : a.gpu_kind) : "any device",
    `${a.machines.started || 0} / ${a.machines_wanted}`,
    String(a.cold_starts.length),
    fmt.usd(a.usd_per_hour),
  ];
}

function badge(state, healthy) {
  const text = state === "started" && healthy === false ? "started, unhealthy" : state;
  return h("span", { class: "badge " + state, text });
}

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value }));
}

function table(head, rows, numeric = []) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : null, text: c })))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c))))),
    ),
  );
}

function count(states, which) {
  return which.reduce((n, s) => n + (states[s] || 0), 0);
}

function project(lat, lon) {
  return [((lon + 180) / 360) * 1000, ((90 - lat) / 180) * 500];
}

const pages = {
  world(snap, arg) {
    const used = snap.regions.filter((r) => r.hosts > 0 || Object.keys(r.machines).length);
    const started = snap.machines.filter((m) => m.state === "started").length;
    const map = h("svg:svg", { class: "map", viewBox: "0 0 1000 500", role: "group", "aria-label": "Regions on a world map" });
    for (let lon = -180; lon <= 180; lon += 30) {
      const [x] = project(0, lon);
      map.append(h("svg:line", { class: "grid", x1: x, y1: 0, x2: x, y2: 500 }));
    }
    for (let lat = -60; lat <= 60; lat += 30) {
      const [, y] = project(lat, 0);
      map.append(h("svg:line", { class: "grid", x1: 0, y1: y, x2: 1000, y2: y }));
    }
    const unplaced = used.filter((r) => r.lat === null || r.lon === null);
    const at = Object.fromEntries(snap.regions.filter((r) => r.lat !== null && r.lon !== null).map((r) => [r.code, project(r.lat, r.lon)]));
    const flows = (snap.flows || []).map((f) => ({ ...f, rate: colo.flowRates[f.from + ">" + f.to] || 0 }));
    // Requests between regions: an arc from the edge's region to the machines', as thick as
    // the rate.
    for (const f of flows) {
      if (f.from === f.to || !at[f.from] || !at[f.to]) continue;
      const [x1, y1] = at[f.from], [x2, y2] = at[f.to];
      const lift = Math.min(80, Math.hypot(x2 - x1, y2 - y1) / 4);
      const d = `M${x1.toFixed(1)},${y1.toFixed(1)} Q${((x1 + x2) / 2).toFixed(1)},${(Math.min(y1, y2) - lift).toFixed(1)} ${x2.toFixed(1)},${y2.toFixed(1)}`;
      const width = 1 + Math.min(6, Math.log2(1 + f.rate));
      map.append(h("svg:path", { class: "flow" + (f.rate > 0 ? " live" : ""), d, "stroke-width": width.toFixed(1) }, h("svg:title", { text: `${f.from} → ${f.to}: ${f.rate.toFixed(2)} req/s, ${f.requests} since the edges started` })));
    }
    for (const [code, n] of Object.entries(snap.edges || {})) {
      if (!at[code]) continue;
      const [x, y] = at[code];
      map.append(h("svg:rect", { class: "edge", x: (x - 4).toFixed(1), y: (y - 16).toFixed(1), width: 8, height: 8 }, h("svg:title", { text: `${n} edge${n > 1 ? "s" : ""} in ${code}` })));
    }
    for (const r of snap.regions) {
      if (r.lat === null || r.lon === null) continue;
      const [x, y] = project(r.lat, r.lon);
      const machines = Object.values(r.machines).reduce((a, b) => a + b, 0);
      const busy = r.machines.started || 0;
      const kind = r.hosts === 0 ? "empty" : busy ? "busy" : "idle";
      const radius = r.hosts === 0 ? 3.5 : 6 + Math.min(14, Math.sqrt(machines) * 2);
      const label = `${r.code} (${r.city}): ${r.hosts} hosts, ${busy} of ${machines} machines started`;
      const go = () => (location.hash = "#/world/" + encodeURIComponent(r.code));
      const g = h(
        "svg:g",
        {
          class: "region " + kind,
          id: "region-" + r.code,
          tabindex: r.hosts ? 0 : null,
          role: r.hosts ? "link" : null,
          "aria-label": label,
          onclick: go,
          onkeydown: (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), go()),
        },
        h("svg:title", { text: label }),
        h("svg:circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: radius.toFixed(1) }),
      );
      if (r.hosts) g.append(h("svg:text", { x: (x + radius + 2).toFixed(1), y: (y + 4).toFixed(1), text: r.code }));
      map.append(g);
    }
    const detail = arg ? snap.regions.find((r) => r.code === arg) : null;
    return h(
      "section",
      {},
      h("h1", { text: "World" }),
      h(
        "div",
        { class: "cards" },
        card("regions with hosts", String(used.filter((r) => r.hosts).length)),
        card("edges", String(Object.values(snap.edges || {}).reduce((a, b) => a + b, 0))),
        card("hosts", String(snap.hosts.length)),
        card("machines started", `${started} of ${snap.machines.length}`),
        card(`cost now (${snap.prices} prices)`, fmt.usd(snap.usd_per_hour) + "/h"),
        card(`spent since ${new Date(snap.ledger.since_ms).toISOString().slice(11, 16)} UTC`, fmt.usd(Object.values(snap.ledger.apps).reduce((n, a) => n + a.usd, 0))),
      ),
      map,
      unplaced.length
        ? h("p", { class: "muted", text: `Not on the map (not in colo's region table): ${unplaced.map((r) => r.code).join(", ")}.` })
        : null,
      h("p", { class: "legend muted" }, "Circles: regions with hosts (green: machines started); squares: edges; arcs: requests from an edge's region to another region's machines."),
      detail ? regionDetail(snap, detail) : null,
      flows.length
        ? h(
            "section",
            { "aria-label": "Requests between regions" },
            h("h2", { text: "Requests between regions" }),
            table(
              ["edge region", "machine region", "req/s", "since the edges started"],
              flows.map((f) => [f.from, f.to, f.rate.toFixed(2), fmt.num(f.requests)]),
              [2, 3],
            ),
          )
        : null,
      h("h2", { text: "Regions" }),
      table(
        ["region", "city", "hosts", "started", "starting", "stopped", "GPU kinds", "$/h", "req/s"],
        used.map((r) => [
          h("a", { href: "#/world/" + encodeURIComponent(r.code), text: r.code }),
          r.city,
          String(r.hosts),
          String(r.machines.started || 0),
          String(count(r.machines, ["starting", "created"])),
          String(count(r.machines, ["stopped", "suspended"])),
          r.gpu_kinds.join(", ") || "CPU slots",
          fmt.usd(r.usd_per_hour),
          // Requests its machines took over the last update, from every edge.
          flows.filter((f) => f.to === r.code).reduce((n, f) => n + f.rate, 0).toFixed(2),
        ]),
        [2, 3, 4, 5, 7, 8],
      ),
    );
  },

  apps(snap, arg) {
    if (arg) return appDetail(snap, arg);
    return h(
      "section",
      {},
      h("h1", { text: "Apps" }),
      snap.apps.length
        ? table(
            ["app", "model", "engine", "GPU", "started / wanted", "cold starts", "$/h", "req/s", "p50", "p99", "TTFT p50", "tokens/s", "$/M tokens", "errors"],
            snap.apps.map((a) => [
              ...appRow(a),
              ...(() => {
                const tr = traffic(snap, a);
                return tr ? [tr.rate, tr.p50, tr.p99, tr.ttft50, tr.tokens, tr.perMtok, String(tr.errors)] : Array(7).fill("–");
              })(),
            ]),
            [4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
          )
        : h("p", { class: "muted", text: "No apps yet: colo model push DIR --name NAME, then colo deploy APP --model NAME." }),
      snap.traffic
        ? h("p", {
            class: "muted",
            text: "Requests and tokens per second over the last update; latency to the response head and time to the first token (TTFT) of streamed completions, since the edges started; $ per million tokens is the cost an hour now over the tokens of the last update.",
          })
        : h("p", { class: "muted", text: "No edge has reported traffic yet." }),
    );
  },

  machines(snap, arg) {
    if (arg) return machineDetail(snap, arg);
    const filter = (document.getElementById("filter") || {}).value || "";
    const shown = snap.machines.filter((m) => !filter || [m.id, m.app, m.host, m.region, m.state].some((v) => v.includes(filter)));
    return h(
      "section",
      {},
      h("h1", { text: "Machines" }),
      h("label", { for: "filter", class: "muted", text: "Filter " }),
      h("input", { id: "filter", type: "search", value: filter, placeholder: "app, host, region or state", oninput: render }),
      machineTable(shown),
    );
  },

  sims(snap, arg) {
    return simsPage(arg);
  },

  models(snap, arg) {
    if (!colo.models) {
      api("/v1/ui/models").then((m) => ((colo.models = m), render()), (e) => status(e.message));
      return h("p", { class: "muted", text: "Loading models…" });
    }
    return h(
      "section",
      {},
      h("h1", { text: "Models" }),
      table(
        ["model", "revision", "size", "files", "cached on"],
        colo.models.map((m) => [
          h("a", { href: "#/models/" + encodeURIComponent(m.name), text: m.name }),
          m.revision.slice(0, 12),
          fmt.bytes(m.bytes),
          String(m.files),
          m.cached_on.join(", ") || "no host yet",
        ]),
        [2, 3],
      ),
      arg ? planView(arg) : h("p", { class: "muted", text: "Choose a model for the planner's options." }),
    );
  },
};

function machineTable(machines) {
  const rows = machines.slice(0, MAX_ROWS).map((m) => {
    const c = m.cold_start;
    const hyd = m.hydration;
    return [
      h("a", { href: "#/machines/" + encodeURIComponent(m.id) }, h("code", { text: m.id })),
      h("a", { href: "#/apps/" + encodeURIComponent(m.app), text: m.app }),
      badge(m.state, m.healthy),
      m.progress || "",
      m.device,
      `${m.host} (${m.region})`,
      hyd ? (hyd.bytes_fetched ? `${fmt.bytes(hyd.bytes_fetched)} at ${(hyd.bytes_fetched / 1e9 / Math.max(hyd.seconds, 1e-9)).toFixed(2)} GB/s` : "cached") : "–",
      c ? `${c.source || ""} ${fmt.ms(c.first_response_ms)}` : "–",
      String(m.restarts),
      m.last_error || "",
    ];
  });
  return h(
    "div",
    {},
    table(["machine", "app", "state", "progress", "device", "host", "last hydration", "last start", "restarts", "last error"], rows, [8]),
    machines.length > MAX_ROWS ? h("p", { class: "muted", text: `Showing ${MAX_ROWS} of ${machines.length}; filter to narrow.` }) : null,
  );
}

function machineDetail(snap, id) {
  const m = snap.machines.find((x) => x.id === id);
  if (!m) return h("section", {}, h("h1", { text: id }), h("p", { text: "No such machine (it may have been destroyed)." }));
  const c = m.cold_start;
  const hyd = m.hydration;
  const log = colo.logs[id];
  if (log === undefined) {
    colo.logs[id] = null;
    fetch(`/v1/apps/${encodeURIComponent(m.app)}/machines/${encodeURIComponent(id)}/logs?lines=40`, {
      headers: { Authorization: "Bearer " + token() },
    }).then(
      async (r) => ((colo.logs[id] = r.ok ? { text: await r.text() } : { missing: r.status }), render()),
      () => ((colo.logs[id] = { missing: "unreachable" }), render()),
    );
  }
  return h(
    "section",
    {},
    h("p", {}, h("a", { href: "#/machines", text: "Machines" }), " / " + id),
    h("h1", { text: id }),
    h(
      "div",
      { class: "cards" },
      card("app", m.app),
      card("state", m.state + (m.healthy ? "" : ", unhealthy")),
      card("device", m.device),
      card("host", `${m.host} (${m.region})`),
      card("cost now", fmt.usd(m.usd_per_hour) + "/h"),
      card("restarts", String(m.restarts)),
    ),
    h("h2", { text: "Last hydration" }),
    hyd
      ? table(
          ["from cache", "from peers", "from the origin", "seconds", "rate"],
          [[fmt.bytes(hyd.bytes_from_cache), fmt.bytes(hyd.bytes_from_peer), fmt.bytes(hyd.bytes_from_origin), hyd.seconds.toFixed(2),
            hyd.bytes_fetched ? (hyd.bytes_fetched / 1e9 / Math.max(hyd.seconds, 1e-9)).toFixed(2) + " GB/s" : "cached"]],
          [0, 1, 2, 3, 4],
        )
      : h("p", { class: "muted", text: "None yet." }),
    h("h2", { text: "Last start" }),
    c
      ? table(["weights from", "queued", "hydrate", "engine load", "first answer"],
          [[c.from_suspended ? "suspended" : c.bytes_from_origin ? "origin" : c.bytes_from_peer ? "peer" : "cache", fmt.ms(c.queued_ms), fmt.ms(c.hydrate_ms), fmt.ms(c.engine_load_ms), fmt.ms(c.first_response_ms)]],
          [1, 2, 3, 4])
      : h("p", { class: "muted", text: "None yet." }),
    m.last_error ? h("p", { role: "alert", text: "Last error: " + m.last_error }) : null,
    h("h2", { text: "Engine log (last 40 lines)" }),
    !log
      ? h("p", { class: "muted", text: "Loading…" })
      : log.missing
        ? h("p", { class: "muted", text: `The log is on host ${m.host}, which this API does not reach (${log.missing}).` })
        : h("pre", { class: "log", tabindex: 0, "aria-label": "Engine log", text: log.text || "(empty)" }),
    h("p", {}, h("button", { type: "button", onclick: () => ((colo.logs[id] = undefined), render()), text: "Reload the log" })),
  );
}

function regionDetail(snap, r) {
  const hosts = snap.hosts.filter((x) => x.region === r.code);
  return h(
    "section",
    { "aria-label": "Region " + r.code },
    h("h2", { text: `${r.code}: ${r.city}` }),
    table(
      ["host", "GPUs", "CPU slots", "devices held", "cached models", "state"],
      hosts.map((x) => [
        x.name,
        Object.entries(x.gpus).map(([k, n]) => `${k} ×${n}`).join(", ") || "none",
        String(x.cpu_slots),
        `${x.devices_held} of ${x.devices}`,
        x.cached_models.join(", ") || "none",
        x.lost ? "lost" : "live",
      ]),
      [2],
    ),
  );
}

function appDetail(snap, name) {
  const a = snap.apps.find((x) => x.name === name);
  if (!a) return h("section", {}, h("h1", { text: name }), h("p", { text: "No such app (it may have been destroyed)." }));
  const machines = snap.machines.filter((m) => m.app === name);
  const widest = Math.max(1, ...a.cold_starts.map((c) => c.first_response_ms));
  return h(
    "section",
    {},
    h("p", {}, h("a", { href: "#/apps", text: "Apps" }), " / " + name),
    h("h1", { text: name }),
    h(
      "div",
      { class: "cards" },
      card("model", `${a.model}@${a.revision.slice(0, 8)}`),
      card("started / wanted", `${a.machines.started || 0} / ${a.machines_wanted}`),
      card("engine", a.engine),
      card("GPU", a.gpu_kind || "any device"),
      card(`cost now (${snap.prices})`, fmt.usd(a.usd_per_hour) + "/h"),
      card("autostop", a.autostop_secs ? a.autostop_secs + " s idle" : "off"),
      card("API keys", String(a.api_keys)),
      ...(() => {
        const tr = traffic(snap, a);
        return tr
          ? [card("requests/s", tr.rate), card("latency p50", tr.p50), card("latency p99", tr.p99),
             card("first token p50", tr.ttft50), card("first token p99", tr.ttft99), card("tokens/s", tr.tokens),
             card("$ per million tokens", tr.perMtok), card("errors 4xx / 5xx", `${tr.t.client_errors} / ${tr.t.server_errors}`),
             card("answered to callers", tr.egress)]
          : [];
      })(),
      ...(() => {
        const spent = snap.ledger.apps[a.name];
        const since = new Date(snap.ledger.since_ms).toISOString().slice(11, 16) + " UTC";
        return [card(`GPU-hours since ${since}`, spent ? spent.gpu_hours.toFixed(3) : "0"), card(`cost since ${since}`, fmt.usd(spent ? spent.usd : 0))];
      })(),
    ),
    errorsBySource(snap.traffic && snap.traffic[name]),
    h("h2", { text: "Cold starts" }),
    a.cold_starts.length
      ? h(
          "div",
          {},
          h("p", { class: "legend muted" }, "Phases:", h("span", { class: "queue", text: "queued" }), h("span", { class: "hydrate", text: "hydrate" }), h("span", { class: "load", text: "engine load" })),
          table(
            ["machine", "weights from", "queued", "hydrate", "engine load", "first answer", "phases"],
            a.cold_starts.map((c) => [
              h("code", { text: c.machine }),
              c.source,
              fmt.ms(c.queued_ms),
              fmt.ms(c.hydrate_ms),
              fmt.ms(c.engine_load_ms),
              fmt.ms(c.first_response_ms),
              h(
                "div",
                { class: "bar", role: "img", "aria-label": `queued ${c.queued_ms} ms, hydrate ${c.hydrate_ms} ms, load ${c.engine_load_ms} ms` },
                h("span", { class: "queue", "width%": (100 * c.queued_ms) / widest }),
                h("span", { class: "hydrate", "width%": (100 * c.hydrate_ms) / widest }),
                h("span", { class: "load", "width%": (100 * c.engine_load_ms) / widest }),
              ),
            ]),
            [2, 3, 4, 5],
          ),
        )
      : h("p", { class: "muted", text: "No start recorded yet." }),
    h("h2", { text: "Machines" }),
    machineTable(machines),
  );
}

// What each source of errors means, for the table of an app's errors.
const ERROR_SOURCES = {
  client: "the caller's request: unknown key, bad body, over a limit",
  capacity: "no machine could take it: none started in time, queue full",
  upstream: "a machine failed or timed out before answering",
  internal: "the edge itself",
  engine: "an engine answered with an error status",
};

function errorsBySource(t) {
  if (!t) return null;
  const rows = Object.entries(t.errors || {}).filter(([, n]) => n > 0);
  return h(
    "section",
    { "aria-label": "Errors by source" },
    h("h2", { text: "Errors by source" }),
    rows.length
      ? table(["source", "errors", "meaning"], rows.map(([source, n]) => [source, fmt.num(n), ERROR_SOURCES[source] || ""]), [1])
      : h("p", { class: "muted", text: "No errors since the edges started." }),
  );
}

function planView(name) {
  const plan = colo.plans[name];
  if (!plan) {
    api("/v1/ui/models/" + encodeURIComponent(name) + "/plan").then(
      (p) => ((colo.plans[name] = p), render()),
      (e) => ((colo.plans[name] = { error: e.message }), render()),
    );
    return h("p", { class: "muted", text: "Planning…" });
  }
  if (plan.error) return h("p", { role: "alert", text: plan.error });
  // Cheapest first.
  const fits = plan.options
    .filter((o) => o.fits && o.usd_per_million_tokens)
    .sort((a, b) => a.usd_per_million_tokens - b.usd_per_million_tokens);
  return h(
    "section",
    { "aria-label": "Planner's options for " + name },
    h("h2", { text: `Planner: ${name}` }),
    h("p", { text: plan.why }),
    fits.length ? chart(fits) : null,
    table(
      ["GPU", "cards", "format", "tokens/s", "$/h", "$ per million tokens"],
      fits.map((o) => [o.gpu, String(o.n_gpus), o.quant, fmt.num(o.tokens_per_s), fmt.usd(o.usd_per_hour), fmt.usd(o.usd_per_million_tokens)]),
      [1, 3, 4, 5],
    ),
  );
}

// $ per million tokens against tokens/s, one point per (kind, cards, format), log-log.
function chart(options) {
  const W = 640, H = 320, L = 60, B = 40;
  const xs = options.map((o) => Math.log10(o.tokens_per_s));
  const ys = options.map((o) => Math.log10(o.usd_per_million_tokens));
  const span = (v) => [Math.floor(Math.min(...v)), Math.ceil(Math.max(...v)) + (Math.min(...v) === Math.max(...v) ? 1 : 0)];
  const [x0, x1] = span(xs), [y0, y1] = span(ys);
  const X = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - 10);
  const Y = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - B - 10);
  const svg = h("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Cost per million tokens against tokens per second, one point per option" });
  svg.append(h("svg:line", { class: "axis", x1: L, y1: H - B, x2: W - 10, y2: H - B }), h("svg:line", { class: "axis", x1: L, y1: 10, x2: L, y2: H - B }));
  for (let e = x0; e <= x1; e++) svg.append(h("svg:text", { x: X(e), y: H - B + 16, "text-anchor": "middle", text: fmt.num(10 ** e) }));
  for (let e = y0; e <= y1; e++) svg.append(h("svg:text", { x: L - 6, y: Y(e) + 4, "text-anchor": "end", text: "$" + (10 ** e >= 1 ? 10 ** e : (10 ** e).toFixed(-e)) }));
  svg.append(h("svg:text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle", text: "tokens/s (log)" }));
  options.forEach((o, i) =>
    svg.append(h("svg:circle", { class: o.quant, cx: X(xs[i]).toFixed(1), cy: Y(ys[i]).toFixed(1), r: 5 }, h("svg:title", { text: `${o.gpu} ×${o.n_gpus} ${o.quant}: ${fmt.num(o.tokens_per_s)} tok/s, ${fmt.usd(o.usd_per_million_tokens)}/M` }))),
  );
  return svg;
}

// Renders a snapshot given by the caller (the browser tests time the World page with 35
// regions and 10,000 machines this way); returns the milliseconds it took.
colo.renderSnapshot = (snap) => {
  colo.snap = snap;
  render();
  return colo.renderMs;
};

function start() {
  api("/v1/ui/snapshot").then(
    (s) => {
      colo.snap = s;
      render();
      listen();
    },
    (e) => status(e.message),
  );
}

window.addEventListener("hashchange", () => {
  if (takeToken()) {
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    return start();
  }
  render();
  document.getElementById("main").focus();
});
if (token()) start();
else showLogin();
