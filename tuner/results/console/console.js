// The tuner console: renders the state the server embedded in the page, then reads it again
// every second (no reload). Controls POST to /console/api/study/NAME/ACTION with the token in
// a header. Everything is built with DOM calls (textContent): no study name is parsed as HTML.
"use strict";

const STATE = JSON.parse(document.getElementById("state").textContent);
const TOKEN = document.querySelector('meta[name="tuner-token"]').content;
const POLL_MS = 1000;
const main = document.getElementById("main");

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// numbers to 4 significant digits, never cut; durations in words
function num(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3).replace(/\.?0+e/, "e");
  return String(Number(v.toPrecision(4)));
}
function dur(s) {
  if (s === null || s === undefined) return "—";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const hr = Math.floor(m / 60);
  return `${hr} h ${String(m % 60).padStart(2, "0")} min`;
}
const badge = (state) => h("span", { class: `badge ${state.replace(" ", "-")}` }, state);
const studyUrl = (name) => `/console/study/${encodeURIComponent(name)}`;

function best(s) {
  if (s.front !== null && s.front !== undefined)
    return `Pareto front: ${s.front} (${s.objectives.map((o, i) => `${s.directions[i]} ${o}`).join(", ")})`;
  if (s.best === null) return "—";
  return `${s.objectives[0]} ${num(s.best)} (#${s.best_trial})`;
}
const budgetWords = (s) =>
  `${s.finished}/${s.target === null || s.target === undefined ? "∞" : s.target}`;
function hours(s) {
  if (s.hours_spent === null || s.hours_spent === undefined) return "—";
  return s.hours_left === null ? `${num(s.hours_spent)} h`
    : `${num(s.hours_spent)} h, ${num(s.hours_left)} h left`;
}
function timeLeft(s) {
  if (s.state === "paused") return "paused";
  if (s.state === "crashed") return "no worker";
  if (["finished", "stopped", "stopped early"].includes(s.state)) return "done";
  return dur(s.time_left_s);
}

// ---- the studies list ------------------------------------------------------------------
function renderStudies(list) {
  const rows = list.map((s) => h("tr", { "data-study": s.name },
    h("td", {}, h("a", { href: studyUrl(s.name) }, s.name)),
    h("td", {}, badge(s.state)),
    h("td", { class: "why" }, s.why),
    h("td", { class: "num" }, budgetWords(s)),
    h("td", {}, best(s)),
    h("td", { class: "num workers" }, s.workers_alive),
    h("td", { class: "num" }, dur(s.elapsed_s)),
    h("td", { class: "num" }, timeLeft(s)),
    h("td", {}, hours(s)),
    h("td", { class: "num" }, s.idle_s === null ? "—" : `${dur(s.idle_s)} ago`)));
  main.replaceChildren(
    h("h1", {}, "Studies"),
    list.length ? h("div", { class: "wrap" }, h("table", { id: "studies" },
      h("tr", {}, ["study", "state", "why", "finished / budget", "best", "workers",
        "elapsed", "time left", "device-hours", "last activity"].map((c) => h("th", {}, c))),
      rows)) : h("p", { class: "muted" }, "No study in this storage yet."));
}

// ---- one study -------------------------------------------------------------------------
let skeleton = null;

function control(action, body) {
  const msg = document.getElementById("msg");
  msg.className = ""; msg.textContent = `${action}…`;
  return fetch(`/console/api/study/${encodeURIComponent(STATE.data.name)}/${action}`, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Tuner-Token": TOKEN },
    body: JSON.stringify(body || {}),
  }).then(async (r) => {
    const answer = await r.json().catch(() => ({}));
    msg.className = r.ok ? "ok" : "err";
    msg.textContent = r.ok ? `${action}: done` : (answer.error || `${action}: refused (${r.status})`);
    poll();
  }).catch((e) => { msg.className = "err"; msg.textContent = String(e); });
}

function buildStudy(s) {
  const field = (id, label, step) => h("label", {}, `${label} `,
    h("input", { id, type: "number", min: "0", step, placeholder: "0" }));
  const value = (id) => document.getElementById(id).value;
  const controls = STATE.controls ? h("div", { class: "controls", id: "controls" },
    h("button", { id: "pause", onclick: () => control("pause") }, "Pause"),
    h("button", { id: "continue", onclick: () => control("continue") }, "Continue"),
    h("button", { id: "stop", class: "danger", onclick: () => {
      if (window.confirm(`Stop study ${s.name}? Running trials checkpoint and wait to resume.`))
        control("stop");
    } }, "Stop"),
    h("span", { class: "muted" }, " Extend by"),
    field("ext-trials", "trials", "1"), field("ext-minutes", "minutes", "any"),
    field("ext-hours", "device-hours", "any"),
    h("button", { id: "extend", onclick: () => control("extend", {
      trials: value("ext-trials"), minutes: value("ext-minutes"), hours: value("ext-hours") }) },
    "Extend"),
    h("span", { id: "msg" })) : h("p", { class: "muted" }, "Read-only console: no controls.");
  const dash = `/dashboard/studies/${s.study_id}`;
  skeleton = {
    title: h("h1", {}), cards: h("div", { class: "cards" }), budget: h("div", {}),
    workers: h("div", {}), running: h("div", {}), rungs: h("div", {}), lineage: h("div", {}),
    fused: h("div", {}), failures: h("div", {}),
  };
  main.replaceChildren(skeleton.title, skeleton.cards, controls,
    h("h2", {}, "Budget"), skeleton.budget,
    h("h2", {}, "Workers"), skeleton.workers,
    h("h2", {}, "Running trials"), skeleton.running,
    skeleton.rungs, skeleton.lineage, skeleton.fused,
    h("h2", {}, "Recent failures"), skeleton.failures,
    h("h2", {}, "Plots in optuna-dashboard"),
    h("p", {}, h("a", { href: dash }, "history and trials"), " · ",
      h("a", { href: `${dash}/analytics` }, "importance, slices, parallel coordinates"), " · ",
      h("a", { href: `${dash}/trial-table` }, "trial table")));
}

function bar(done, taken, target, words) {
  const pct = (x) => `${Math.min(100, (100 * x) / Math.max(1, target))}%`;
  return h("div", { class: "bar", title: words },
    h("span", { class: "taken", style: `width:${pct(taken)}` }),
    h("span", { style: `width:${pct(done)}` }), h("em", {}, words));
}

function table(id, headers, rows) {
  if (!rows.length) return h("p", { class: "muted", id }, "none");
  return h("div", { class: "wrap" }, h("table", { id },
    h("tr", {}, headers.map((c) => h("th", {}, c))), rows));
}

function sparkline(curve, width = 260, height = 70) {
  if (curve.length < 1) return h("div", {}, "no epoch yet");
  const xs = curve.map((p) => p[0]), ys = curve.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-12);
  const pts = curve.map(([x, y]) => `${(6 + ((x - x0) / (x1 - x0)) * (width - 12)).toFixed(1)},` +
    `${(height - 6 - ((y - y0) / (y1 - y0)) * (height - 12)).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts); line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2e90fa"); line.setAttribute("stroke-width", "2");
  svg.append(line);
  return svg;
}

function renderStudy(s) {
  if (!skeleton) buildStudy(s);
  skeleton.title.replaceChildren(s.name, badge(s.state), h("small", { class: "muted" }, s.why));
  const c = s.counts;
  skeleton.cards.replaceChildren(
    h("div", { class: "card" }, h("b", {}, budgetWords(s)), h("span", {}, "finished / budget")),
    h("div", { class: "card" }, h("b", {}, best(s)), h("span", {}, "best")),
    h("div", { class: "card" }, h("b", { id: "workers-alive" }, s.workers_alive),
      h("span", {}, "workers alive")),
    h("div", { class: "card" }, h("b", {}, timeLeft(s)), h("span", {}, "time left")),
    h("div", { class: "card" }, h("b", {}, dur(s.elapsed_s)), h("span", {}, "elapsed")),
    h("div", { class: "card" }, h("b", {}, Object.entries(c).filter(([, n]) => n)
      .map(([k, n]) => `${n} ${k}`).join(" · ") || "no trial yet"), h("span", {}, "trials")));
  const target = s.target === null ? Math.max(s.taken || 0, s.finished) : s.target;
  skeleton.budget.replaceChildren(...[
    bar(s.finished, s.taken || 0, target,
      `${s.finished} finished, ${s.taken || 0} started of ${s.target === null ? "no limit" : s.target}`),
    s.hours_target ? h("div", { style: "margin-top:.4em" }, bar(s.hours_spent, s.hours_spent,
      s.hours_target, `${num(s.hours_spent)} of ${num(s.hours_target)} device-hours`)) : null,
    s.deadline_in_s !== null ? h("p", {}, s.deadline_in_s > 0
      ? `deadline in ${dur(s.deadline_in_s)}` : "deadline passed") : null].filter(Boolean));
  skeleton.workers.replaceChildren(table("workers", ["host", "pid", "device", "trial", "epoch",
    "heartbeat", ""], s.workers.map((w) => h("tr", { class: w.lost ? "lost" : "" },
    h("td", {}, w.host), h("td", { class: "num" }, w.pid), h("td", {}, w.device),
    h("td", { class: "num" }, w.trial === null ? "idle" : `#${w.trial}`),
    h("td", { class: "num" }, w.epoch === null ? "—" : `${w.epoch}/${s.epochs ?? "?"}`),
    h("td", { class: "num" }, `${dur(w.heartbeat_age_s)} ago`),
    h("td", {}, w.lost ? h("span", { class: "badge lost" }, "lost") : "")))));
  skeleton.running.replaceChildren(s.running.length ? h("div", { class: "curves", id: "running" },
    s.running.map((r) => h("div", { class: "curve", "data-trial": r.number },
      h("div", {}, `#${r.number} · epoch ${r.epoch}/${s.epochs ?? "?"} · ${r.host ?? "?"}:${r.pid ?? "?"}`,
        r.lost ? h("span", { class: "badge lost" }, " lost") : "",
        r.stop_asked ? " · stopping" : ""),
      sparkline(r.curve),
      STATE.controls && !r.stop_asked ? h("button", { class: "stop-trial",
        onclick: () => control("stop-trial", { trial: r.number }) }, "stop trial") : null)))
    : h("p", { class: "muted", id: "running" }, "no trial is running"));
  skeleton.rungs.replaceChildren(...(s.rungs.length ? [h("h2", {}, "Rungs (paused trials)"),
    table("rungs", ["epoch", "paused", "promoted", "retired"], s.rungs.map((r) => h("tr", {},
      h("td", { class: "num" }, r.epoch), h("td", { class: "num" }, r.paused),
      h("td", { class: "num" }, r.promoted), h("td", { class: "num" }, r.retired))))] : []));
  skeleton.lineage.replaceChildren(...(s.lineage.length ? [h("h2", {}, "PBT lineage"),
    table("lineage", ["trial", "member", "at epoch", "took weights of", "changed"],
      s.lineage.slice(-60).reverse().map((p) => h("tr", {},
        h("td", { class: "num" }, `#${p.trial}`), h("td", { class: "num" }, p.member),
        h("td", { class: "num" }, p.epoch),
        h("td", {}, p.donor === null ? "its own" : `member ${p.donor} (#${p.donor_trial})`),
        h("td", {}, Object.entries(p.changes).map(([k, [a, b]]) => `${k} ${num(a)}→${num(b)}`)
          .join(", ") || "—"))))] : []));
  skeleton.fused.replaceChildren(...(s.fused_trials ? [h("h2", {}, "Fused groups"),
    h("p", {}, `${s.fused_trials} trials trained fused.`),
    table("fused", ["worker", "trials training together"], s.fused_groups.map((g) =>
      h("tr", {}, h("td", {}, `${g.host}:${g.pid}`), h("td", {}, g.trials.map((n) => `#${n}`)
        .join(" ")))))] : []));
  skeleton.failures.replaceChildren(table("failures", ["trial", "when", "why", ""],
    s.failures.map((f) => h("tr", {}, h("td", { class: "num" }, `#${f.trial}`),
      h("td", {}, f.at ?? "—"), h("td", { class: "why" }, f.reason ?? "—"),
      h("td", {}, STATE.controls ? h("button", { class: "retry",
        onclick: () => control("retry", { trial: f.trial }) }, "retry") : "")))));
}

// ---- live ------------------------------------------------------------------------------
function render() {
  if (STATE.view === "studies") renderStudies(STATE.data);
  else renderStudy(STATE.data);
}

function poll() {
  const url = STATE.view === "studies" ? "/console/api/studies"
    : `/console/api/study/${encodeURIComponent(STATE.data.name)}`;
  return fetch(url, { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((data) => {
      STATE.data = data;
      render();
      document.getElementById("live").textContent =
        `live · ${new Date().toLocaleTimeString()}`;
    })
    .catch((e) => { document.getElementById("live").textContent = `not updating: ${e.message}`; });
}

render();
setInterval(poll, POLL_MS);
