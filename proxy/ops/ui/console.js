// The console of session-broker: reads the admin API (/admin, same origin) with the token the
// operator typed, kept in this tab's sessionStorage only. Every value from the API goes into the
// page as text (textContent), never as markup. Deadlines are the store's clock: the offset between
// it and this browser's clock is taken from each answer, so countdowns are right whatever the
// browser's clock says.
"use strict";

const TOKEN_KEY = "session-broker.admin-token";
const REFRESH_MS = 3000;
const API = "../admin";

const ui = {
  login: document.getElementById("login"),
  token: document.getElementById("token"),
  connected: document.getElementById("connected"),
  refreshed: document.getElementById("refreshed"),
  pause: document.getElementById("pause"),
  forget: document.getElementById("forget"),
  status: document.getElementById("status"),
  pools: document.getElementById("pools"),
};
let timer = null;
let paused = false;
let connected = false;
let clockOffsetMs = 0; // store clock minus browser clock
const lastTotals = new Map(); // pool -> {at, attempts, limited}

class ApiError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // token | unreachable | missing | api
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError("unreachable", "The replica is unreachable (" + err.message + "); retrying.");
  }
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (response.ok) return data;
  const detail = data && data.error ? data.error : null;
  if (response.status === 401 || response.status === 403) {
    throw new ApiError("token", "The admin token was refused (" + response.status +
      "): it is not this replica's ADMIN_TOKEN. Type it again.");
  }
  if (response.status === 404 && !detail) {
    throw new ApiError("missing", "This replica has no admin API (404): is ADMIN_TOKEN set?");
  }
  if (response.status >= 502 && !detail) {
    throw new ApiError("unreachable", "The replica is unreachable (" + response.status + "); retrying.");
  }
  const message = detail ? detail.code + ": " + detail.message : response.statusText;
  throw new ApiError("api", "The replica answered " + response.status + " (" + message + ").");
}

// ---- small builders --------------------------------------------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const pct = (x) => (x === null || x === undefined ? "–" : Math.round(x * 100) + "%");
const storeNow = () => Date.now() + clockOffsetMs;

function duration(ms) {
  if (ms <= 0) return "now";
  const s = ms / 1000;
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 120) return Math.round(s) + " s";
  const m = Math.floor(s / 60);
  if (m < 120) return m + " min " + String(Math.round(s % 60)).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
}

function countdown(untilMs) {
  return el("span", { class: "countdown", "data-until": String(untilMs) }, duration(untilMs - storeNow()));
}

function tick() {
  for (const node of document.querySelectorAll("[data-until]")) {
    node.textContent = duration(Number(node.getAttribute("data-until")) - storeNow());
  }
}

function setStatus(text, kind) {
  ui.status.textContent = text;
  ui.status.className = kind || "";
}

// ---- what a session's state means ------------------------------------------------------------
function why(s) {
  const cell = el("div", { class: "why" });
  const add = (text, untilMs, suffix) => {
    cell.append(text);
    if (untilMs) cell.append(" ", countdown(untilMs), suffix || "");
  };
  switch (s.state) {
    case "available": add("eligible"); break;
    case "busy": add("at its concurrency limit (" + s.in_flight + "/" + s.max_concurrency + ")"); break;
    case "probing": add("breaker half-open, its probe is out"); break;
    case "cooling": add("cooling after a rate limit:", s.cooldown_until_ms, " left"); break;
    case "quota": add("pace or unit budget spent:", s.quota_until_ms, " left"); break;
    case "open": add("breaker open: half-opens in", s.breaker_until_ms); break;
    case "draining": add("draining: " + s.in_flight + " in flight"); break;
    case "drained": add("drained: safe to rotate"); break;
    case "removed": add("no replica's configuration names it"); break;
    case "disabled":
      add(s.disabled_reason === "auth" ? "credential refused (401/403): replace it, then enable"
        : "disabled: " + (s.disabled_reason || "operator"));
      break;
    default: add(s.state);
  }
  if (s.last_error && s.state !== "available") {
    cell.append(el("small", {}, "last error: " + s.last_error));
  }
  return cell;
}

function quotaCell(s) {
  const parts = [];
  if (s.rpm) parts.push(num(s.rpm) + " rpm");
  if (s.tpm) parts.push(num(s.units_available) + "/" + num(s.tpm) + " units left");
  parts.push(num(s.units) + " units used");
  return parts.join(" · ");
}

function rateCell(s) {
  if (s.rate_rpm === null || s.rate_rpm === undefined) return el("span", { class: "muted" }, "unpaced");
  return num(Math.round(s.rate_rpm * 10) / 10) + " rpm (" + (s.rate_source || "?") + ")";
}

function breakerCell(s) {
  if (s.breaker === "open") return el("span", {}, "open for ", countdown(s.breaker_until_ms));
  return s.breaker.replace("_", "-");
}

function weightCell(s) {
  if (s.weight_override === null || s.weight_override === undefined) return num(s.weight);
  return num(s.weight_override) + " (set; configured " + num(s.weight) + ")";
}

// ---- actions ---------------------------------------------------------------------------------
const ACTIONS = [
  ["disable", "Disable"], ["drain", "Drain"], ["enable", "Enable"], ["reset", "Reset"], ["weight", "Weight…"],
];

async function act(pool, session, action, button) {
  let method = "POST", body;
  const path = "/sessions/" + encodeURIComponent(session.id) + "/" + action + "?pool=" + encodeURIComponent(pool);
  if (action === "disable") {
    const reason = window.prompt("Disable " + session.id + " for the whole fleet. Reason:", "operator");
    if (reason === null) return;
    body = { reason: reason.trim() || "operator" };
  } else if (action === "weight") {
    const answer = window.prompt("Weight of " + session.id + " (empty: back to the configured " +
      session.weight + "):", session.weight_override ?? "");
    if (answer === null) return;
    const weight = answer.trim() === "" ? null : Number(answer);
    if (weight !== null && !(Number.isFinite(weight) && weight > 0)) {
      return setStatus("A weight is a number above 0, not " + JSON.stringify(answer) + ".", "error");
    }
    method = "PUT";
    body = { weight };
  } else if ((action === "drain" || action === "reset") &&
    !window.confirm(action[0].toUpperCase() + action.slice(1) + " " + session.id + "?")) {
    return;
  }
  button.disabled = true;
  try {
    const view = await api(method, path, body);
    setStatus(actionDone(action, view), "done");
  } catch (err) {
    setStatus(action + " " + session.id + " failed: " + err.message, "error");
    if (err.kind === "token") return showLogin(err.message);
  }
  await refresh();
}

function actionDone(action, view) {
  const verb = { disable: "disabled", drain: "draining", enable: "enabled", reset: "reset", weight: "reweighed" };
  return "Session " + view.id + " " + verb[action] + ": now " + view.state + ".";
}

// ---- rendering -------------------------------------------------------------------------------
const COLUMNS = ["Session", "State", "Why / until", "Tier", "Health", "Quota and units",
  "In flight", "Leases taken", "Breaker", "Rate", "Weight", "Actions"];

function sessionRow(pool, s) {
  const actions = el("div", { class: "actions" });
  for (const [action, label] of ACTIONS) {
    const button = el("button", { type: "button", "data-action": action }, label);
    button.addEventListener("click", () => act(pool, s, action, button));
    actions.append(button);
  }
  const contents = [
    s.id,
    el("span", { class: "state " + s.state }, s.state),
    why(s),
    s.priority,
    [pct(s.health), el("small", { class: "muted" }, " · " + pct(s.success_rate) + " ok" +
      (s.latency_ms === null ? "" : " · " + num(s.latency_ms) + " ms"))],
    quotaCell(s),
    s.in_flight + (s.max_concurrency ? "/" + s.max_concurrency : ""),
    num(s.leases) + (s.leases_expired ? " (" + num(s.leases_expired) + " expired)" : ""),
    breakerCell(s),
    rateCell(s),
    weightCell(s),
    actions,
  ];
  // One wrapper per cell: on a phone each cell is a two-column grid (its label, its content).
  const cells = contents.map((content, i) => el("td", { "data-label": COLUMNS[i], class: i ? "" : "id" },
    el("div", {}, ...[].concat(content))));
  return el("tr", { "data-session": s.id }, ...cells);
}

function perSecond(pool, attempts, limited) {
  const now = Date.now();
  const last = lastTotals.get(pool);
  lastTotals.set(pool, { at: now, attempts, limited });
  if (!last || now - last.at < 500) return null;
  const seconds = (now - last.at) / 1000;
  return { attempts: Math.max(0, attempts - last.attempts) / seconds, limited: Math.max(0, limited - last.limited) / seconds };
}

function figure(label, value, note) {
  return el("div", {}, el("dt", {}, label), el("dd", {}, value, note ? el("small", {}, " " + note) : null));
}

function poolSection(info, list, fleet) {
  const sum = (key) => list.sessions.reduce((total, s) => total + (s.outcomes[key] || 0), 0);
  const attempts = list.sessions.reduce((total, s) =>
    total + Object.values(s.outcomes).reduce((a, b) => a + b, 0), 0);
  const limited = sum("rate_limited");
  const rates = perSecond(info.name, attempts, limited);
  const counts = info.summary.sessions;
  const others = fleet.replicas.filter((r) => r.id !== fleet.replica).length;
  const figures = el("dl", { class: "figures" },
    figure("Replicas", num(fleet.replicas.length), others ? "this one and " + others + " more" : "this one"),
    figure("Upstream attempts", num(attempts), rates ? rates.attempts.toFixed(1) + "/s" : null),
    figure("429s", num(limited), rates ? rates.limited.toFixed(1) + "/s" : null),
    figure("Waiting", num(fleet.waiting_here) + " here",
      fleet.waiting_replicas + (fleet.waiting_replicas === 1 ? " replica" : " replicas") + " waiting"),
    figure("Leases out", num(info.summary.leases)),
    figure("Available", num(counts.available) + "/" + num(counts.total),
      ["cooling", "quota", "open", "busy", "disabled"].filter((k) => counts[k]).map((k) => counts[k] + " " + k).join(", ")),
  );
  const alerts = Object.keys(info.summary.alerts || {});
  const head = el("div", { class: "pool-head" },
    el("h2", {}, "Pool " + info.name),
    el("span", { class: "meta" }, [info.default ? "default" : null, info.strategy, info.upstream,
      info.fallbacks.length ? "falls back to " + info.fallbacks.join(", ") : null].filter(Boolean).join(" · ")),
    alerts.length ? el("span", { class: "state open" }, "alerts: " + alerts.join(", ")) : null,
  );
  const headRow = el("tr", {}, ...COLUMNS.map((c) => el("th", { scope: "col" }, c)));
  const body = el("tbody", {}, ...list.sessions.map((s) => sessionRow(info.name, s)));
  const table = el("table", { "data-pool": info.name }, el("thead", {}, headRow), body);
  return el("section", { class: "pool", "data-pool": info.name }, head, figures, el("div", { class: "table-wrap" }, table));
}

async function load() {
  try {
    const pools = await api("GET", "/pools");
    const sections = await Promise.all(pools.pools.map(async (info) => {
      const q = "?pool=" + encodeURIComponent(info.name);
      const [list, fleet] = await Promise.all([api("GET", "/sessions" + q), api("GET", "/fleet" + q)]);
      clockOffsetMs = list.now_ms - Date.now();
      return poolSection(info, list, fleet);
    }));
    if (!connected) return;
    ui.pools.replaceChildren(...sections);
    if (!sections.length) setStatus("This replica serves no pool yet.");
    else if (ui.status.className !== "done") {
      setStatus("Connected: refreshed every " + REFRESH_MS / 1000 + " s.");
    }
    ui.refreshed.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (!connected) return;
    if (err.kind === "token") return showLogin(err.message);
    setStatus(err.message + (ui.pools.children.length ? " Showing the last data read." : ""), "error");
  }
}

// One read at a time: a refresh asked for while one runs (after an action) follows it.
let running = null;
let again = false;
async function refresh() {
  if (running) {
    again = true;
    return running;
  }
  clearTimeout(timer);
  running = load();
  try { await running; } finally { running = null; }
  if (again) {
    again = false;
    return refresh();
  }
  if (connected && !paused) timer = setTimeout(refresh, REFRESH_MS);
}

function showLogin(message, kind = "error") {
  connected = false;
  clearTimeout(timer);
  sessionStorage.removeItem(TOKEN_KEY);
  ui.pools.replaceChildren();
  ui.connected.hidden = true;
  ui.login.hidden = false;
  if (message) setStatus(message, kind);
  ui.token.focus();
}

function connect() {
  connected = true;
  ui.login.hidden = true;
  ui.connected.hidden = false;
  setStatus("Connecting…");
  refresh();
}

ui.login.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  if (!/^[\x21-\x7e]+$/.test(token)) {
    setStatus("That is not an admin token: it holds characters an HTTP header cannot carry.", "error");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  ui.token.value = "";
  connect();
});
ui.forget.addEventListener("click", () => showLogin("Token forgotten.", "done"));
ui.pause.addEventListener("click", () => {
  paused = !paused;
  ui.pause.textContent = paused ? "Resume" : "Pause";
  if (!paused) refresh(); else clearTimeout(timer);
});
setInterval(tick, 250);
if (sessionStorage.getItem(TOKEN_KEY)) connect();
