// wsgate admin page: polls GET /actuator/admin/data every second and draws it. No dependencies, no build step.
// The admin token comes from the form, `?token=` or `#token=` (then removed from the address bar) and is kept in
// sessionStorage for this tab only. Charts are inline SVG drawn here; history lives in the page (the last 2 minutes).
(function () {
  "use strict";

  const DATA_URL = "/actuator/admin/data";
  const TOKEN_KEY = "wsgate.admin-token";
  const POLL_MS = 1000;
  const HISTORY = 120;
  const MIN_SLOTS = 20;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    timer: null,
    tunnels: [],
    sessions: [],
    rate: [],
    perInstance: new Map(),  // address -> {out: [], in: []}
    last: null,
  };
  window.wsgateAdmin = state;  // for tests and curious operators

  function takeTokenFromUrl() {
    const url = new URL(location.href);
    const hash = new URLSearchParams(url.hash.replace(/^#/, ""));
    const token = url.searchParams.get("token") || hash.get("token");
    if (token) {
      url.searchParams.delete("token");
      url.hash = "";
      history.replaceState(null, "", url.pathname + url.search);
      sessionStorage.setItem(TOKEN_KEY, token);
    }
  }

  function setLive(kind, text) {
    $("live").dataset.state = kind;
    $("live-text").textContent = text;
  }

  function showLogin(message) {
    stopPolling();
    $("dashboard").hidden = true;
    $("login").hidden = false;
    $("forget-pill").hidden = true;
    $("token-error").hidden = !message;
    $("token-error").textContent = message || "";
    setLive("error", message ? "not authorized" : "waiting for a token");
    $("token-input").focus();
  }

  function stopPolling() {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }

  async function poll() {
    state.timer = null;
    const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
    let response;
    try {
      response = await fetch(DATA_URL, { headers, cache: "no-store" });
    } catch (error) {
      setLive("stale", "gateway unreachable, retrying");
      schedule();
      return;
    }
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      state.token = sessionStorage.getItem(TOKEN_KEY);
      showLogin(state.last === null && response.status === 401 && !headers.Authorization ? "" : body.error || "refused");
      return;
    }
    if (!response.ok) {
      setLive("stale", "data answered " + response.status + ", retrying");
      schedule();
      return;
    }
    const data = await response.json();
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("forget-pill").hidden = !state.token;
    render(data);
    setLive("live", "live · " + new Date(data.generated_at_ms).toLocaleTimeString());
    schedule();
  }

  function schedule() {
    stopPolling();
    state.timer = setTimeout(poll, POLL_MS);
  }

  function push(series, value) {
    series.push(value);
    if (series.length > HISTORY) series.shift();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function niceMax(values) {
    const top = Math.max(1, ...values.filter((v) => Number.isFinite(v)));
    const magnitude = Math.pow(10, Math.floor(Math.log10(top)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= top) return step * magnitude;
    return top;
  }

  // Lines of equal-length series, right-aligned on a time axis of at least MIN_SLOTS samples (growing up to
  // HISTORY), so that a young page does not squeeze its first points into a corner; the first gets an area.
  function drawChart(target, seriesList) {
    const width = 300, height = 60, pad = 3;
    const max = niceMax(seriesList.flat());
    const slots = Math.min(HISTORY, Math.max(MIN_SLOTS, ...seriesList.map((s) => s.length)));
    const x = (i, n) => width - (n - 1 - i) * (width / (slots - 1));
    const y = (v) => height - pad - (Math.max(0, v) / max) * (height - 2 * pad);
    target.replaceChildren();
    target.appendChild(svg("line", { class: "base", x1: 0, x2: width, y1: height - pad, y2: height - pad }));
    seriesList.forEach((series, index) => {
      if (series.length === 0) return;
      const n = series.length;
      const points = series.map((v, i) => x(i, n).toFixed(1) + "," + y(v).toFixed(1));
      if (index === 0) {
        const area = "M" + x(0, n).toFixed(1) + "," + (height - pad) + " L" + points.join(" L") +
          " L" + x(n - 1, n).toFixed(1) + "," + (height - pad) + " Z";
        target.appendChild(svg("path", { class: "area", d: area }));
      }
      target.appendChild(svg("polyline", { class: index === 0 ? "line" : "line second", points: points.join(" ") }));
    });
    const title = svg("title");
    title.textContent = "scale 0 – " + max;
    target.appendChild(title);
  }

  function fmtRate(value) {
    if (value === undefined || value === null) return "–";
    return value >= 100 ? Math.round(value).toString() : value.toFixed(1);
  }

  function render(data) {
    state.last = data;
    const gateway = data.gateway;
    const cluster = data.cluster;
    const instances = data.services.flatMap((s) => s.instances.map((i) => Object.assign({ service: s.name }, i)))
      .sort((a, b) => nameOf(a).localeCompare(nameOf(b)) || a.address.localeCompare(b.address));
    push(state.tunnels, gateway.active_tunnels);
    push(state.sessions, cluster.sessions);
    push(state.rate, cluster.rates.messages_out || 0);
    $("fig-tunnels").textContent = gateway.active_tunnels;
    $("fig-sessions").textContent = cluster.sessions;
    $("fig-rate").textContent = fmtRate(cluster.rates.messages_out || 0);
    drawChart($("chart-tunnels"), [state.tunnels]);
    drawChart($("chart-sessions"), [state.sessions]);
    drawChart($("chart-rate"), [state.rate]);
    const passing = instances.filter((i) => i.status === "passing" || i.status === "static").length;
    $("fact-routes").textContent = data.routes.length;
    $("fact-instances").textContent = passing + " / " + instances.length;
    $("fact-connections").textContent = gateway.open_connections;
    $("fact-upgrades").textContent = gateway.upgrades;
    const discovery = gateway.discovery || {};
    $("discovery-pill").hidden = false;
    $("discovery").textContent = (discovery.provider || "?") + " " + (discovery.status || "?");
    $("discovery").className = discovery.status === "UP" ? "up" : "down";
    renderNodes(data.services, instances);
    renderRoutes(data.routes);
  }

  function stat(label, value, className) {
    const box = el("div", "stat " + (className || ""));
    box.appendChild(el("span", "label", label));
    box.appendChild(el("span", "value", value));
    return box;
  }

  function renderNodes(services, instances) {
    const container = $("nodes");
    const seen = new Set();
    const cards = [];
    for (const instance of instances) {
      seen.add(instance.address);
      let history = state.perInstance.get(instance.address);
      if (!history) state.perInstance.set(instance.address, history = { out: [], in: [] });
      const stats = instance.stats || { reachable: false, error: "not polled", rates: {} };
      push(history.out, stats.rates.messages_out || 0);
      push(history.in, stats.rates.messages_in || 0);
      cards.push(nodeCard(instance, stats, history));
    }
    for (const address of state.perInstance.keys()) if (!seen.has(address)) state.perInstance.delete(address);
    const problems = services.filter((s) => s.error).map((s) => el("p", "card problem empty-note", s.name + ": " + s.error));
    if (cards.length === 0) {
      cards.push(el("p", "card muted empty-note", "No instances: no route uses lb://, or discovery has none yet."));
    }
    container.replaceChildren(...problems, ...cards);
  }

  function nameOf(instance) {
    return (instance.stats && instance.stats.node) || instance.node_id || instance.id;
  }

  function checksText(checks) {
    if (checks.length === 0) return "";
    const failing = checks.filter((c) => c.status !== "passing");
    if (failing.length === 0) return checks.length + (checks.length === 1 ? " check" : " checks") + " passing";
    return failing.map((c) => c.name + ": " + c.status).join(", ");
  }

  function nodeCard(instance, stats, history) {
    const name = nameOf(instance);
    const card = el("article", "card node" + (stats.reachable ? "" : " unreachable"));
    card.dataset.instance = instance.address;
    card.dataset.node = name;
    const header = el("header");
    header.appendChild(el("h3", "name", name));
    header.appendChild(el("span", "tag " + instance.status, instance.status));
    if (!instance.in_pool) header.appendChild(el("span", "tag", "not in pool"));
    if (!stats.reachable) header.appendChild(el("span", "tag unreachable", "no answer"));
    if (stats.draining) header.appendChild(el("span", "tag draining", "draining"));
    header.appendChild(el("span", "service muted", instance.service));
    card.appendChild(header);
    const checks = checksText(instance.checks);
    const addr = el("div", "addr muted", instance.address + (checks ? " · " + checks : ""));
    card.appendChild(addr);
    const grid = el("div", "stats");
    grid.appendChild(stat("sessions", stats.sessions === null || stats.sessions === undefined ? "–" : stats.sessions,
      "sessions"));
    grid.appendChild(stat("tunnels", instance.active_tunnels, "tunnels"));
    grid.appendChild(stat("out / s", stats.reachable ? fmtRate(stats.rates.messages_out || 0) : "–", "rate-out"));
    grid.appendChild(stat("in / s", stats.reachable ? fmtRate(stats.rates.messages_in || 0) : "–", "rate-in"));
    card.appendChild(grid);
    const chart = svg("svg", { class: "chart small", viewBox: "0 0 300 60", preserveAspectRatio: "none",
      "aria-label": "messages per second of " + name });
    drawChart(chart, [history.out, history.in]);
    card.appendChild(chart);
    const legend = el("div", "legend");
    const out = el("span"); out.appendChild(el("i")); out.appendChild(document.createTextNode("messages out/s"));
    const inn = el("span"); inn.appendChild(el("i", "second")); inn.appendChild(document.createTextNode("in/s"));
    legend.append(out, inn);
    card.appendChild(legend);
    if (stats.error) card.appendChild(el("div", "problem", stats.error));
    return card;
  }

  function renderRoutes(routes) {
    const rows = routes.map((route) => {
      const row = el("tr");
      const id = el("td"); id.appendChild(el("strong", "", route.route_id));
      const uri = el("td"); uri.appendChild(el("code", "", route.uri));
      const predicates = el("td"); predicates.appendChild(el("code", "", route.predicate));
      const filters = el("td");
      for (const filter of route.filters) filters.appendChild(el("code", "item", filter));
      if (route.filters.length === 0) filters.appendChild(el("span", "muted", "none"));
      row.append(id, uri, predicates, filters, el("td", "num", route.order));
      return row;
    });
    $("routes").replaceChildren(...rows);
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    state.token = token;
    $("token-input").value = "";
    setLive("stale", "connecting");
    poll();
  });

  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.last = null;
    showLogin("");
  });

  takeTokenFromUrl();
  state.token = sessionStorage.getItem(TOKEN_KEY);
  // Without a token, try once anyway: a gateway that listens on loopback only answers without one.
  poll();
})();
