// The pair's status page: polls this node's /ui/pair.json once a second and draws both nodes from it.
// Read-only: no action is offered here. Text from the agents is only ever set as text, never as markup.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 2500;
const TIMELINE_ROWS = 80;
const NOISE = new Set(["done", "services_health", "reporting"]);
const PROMOTIONS = new Set(["switchover_promoted", "manual_promotion"]);

let token = sessionStorage.getItem("standby-token");
let lastOk = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "unknown";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "unknown";
  if (s < 1) return s.toFixed(2) + " s";
  if (s < 120) return s.toFixed(1) + " s";
  return Math.round(s / 60) + " min";
}

function clock(t) {  // ISO text or epoch seconds -> "YYYY-MM-DD HH:MM:SS.mmm" UTC
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace("Z", "");
}

// ---- merging both nodes' views ------------------------------------------------------------

function merge(doc) {
  const here = doc.here;
  const peer = doc.peer;
  const nodes = {};
  nodes[here.node] = { name: here.node, view: here, reachable: true, here: true };
  nodes[peer.name] = {
    name: peer.name, view: peer.view, reachable: peer.reachable === true, checking: peer.reachable === null,
    error: peer.error, age: peer.age_s, heardBy: here.peer_said, here: false,
  };
  // A node whose agent does not answer may still be heard in heartbeats: its word counts there.
  for (const n of Object.values(nodes)) {
    const said = n.reachable ? n.view : (n.heardBy || null);
    n.role = said ? said.role : null;
    n.services = !!(said && said.services);
    n.reportingHeld = !!(n.reachable ? n.view.reporting && n.view.reporting.held : said && said.reporting);
  }
  const all = Object.values(nodes);
  const primaries = all.filter((n) => n.role === "primary").map((n) => n.name);
  const holders = all.filter((n) => n.services).map((n) => n.name);
  const reporting = all.filter((n) => n.reportingHeld).map((n) => n.name);
  const entries = new Map();
  for (const n of Object.values(nodes)) {
    for (const e of (n.view && n.view.history) || []) entries.set(e.time + "|" + e.node + "|" + e.event + "|" + (e.action || ""), e);
  }
  const timeline = [...entries.values()].sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
  return { here, nodes, names: Object.keys(nodes).sort(), primaries, holders, reporting, timeline };
}

function isPromotion(e) {
  return (e.event === "decision" && e.action === "promote") || PROMOTIONS.has(e.event);
}

function primarySince(pair, name) {
  const p = pair.timeline.find((e) => e.node === name && isPromotion(e));
  if (p) return { at: p.time, exact: true };
  const s = pair.timeline.find((e) => e.node === name && e.event === "agent_started");
  return s ? { at: s.time, exact: false } : null;
}

// ---- drawing -----------------------------------------------------------------------------------

function banners(pair) {
  const out = [];
  const loud = (t) => out.push(el("div", { class: "banner loud" }, t));
  const warn = (t) => out.push(el("div", { class: "banner warn" }, t));
  if (pair.primaries.length > 1) loud(`Two primaries: ${pair.primaries.join(" and ")} both accept writes`);
  if (pair.primaries.length === 0) loud("No primary: no node accepts writes");
  if (pair.holders.length > 1) loud(`Service IPs held by ${pair.holders.join(" and ")}: clients may reach either node`);
  if (pair.reporting.length > 1) loud(`Reporting IP held by ${pair.reporting.join(" and ")}`);
  for (const name of pair.names) {
    const n = pair.nodes[name];
    if (!n.here && !n.reachable && !n.checking) {
      warn(`${name} is unreachable: its agent does not answer` + (n.error ? ` (${n.error})` : "") +
           (n.heardBy ? `; its heartbeats still arrive (${n.heardBy.role})` : ""));
    }
    const v = n.reachable ? n.view : null;
    if (!v) continue;
    if (v.fenced) loud(`${name} is fenced: it may not become primary by itself; rejoin it as a standby`);
    if (v.maintenance) {
      warn(`Maintenance on ${name}: automatic failover suspended by ${v.maintenance.by} until ${v.maintenance.until} ` +
           `(${v.maintenance.remaining_s} s left)`);
    }
    if (v.role === "primary" && v.degraded && v.durability === "sync") {
      loud(`Degraded: ${name} does not wait for a standby; commits acknowledged now exist only on ${name}`);
    }
    if (v.role === "standby" && v.mode === "hot" && !v.eligible) {
      warn(`${name} is not eligible: it would not take over if the primary failed now`);
    }
  }
  return out;
}

function fact(dl, label, value, cls, id) {
  dl.append(el("dt", {}, label), el("dd", { class: cls || null, id: id || null }, value));
}

function nodeCard(pair, n) {
  const v = n.view;
  const role = n.reachable ? v.role : (n.checking ? "checking" : "unreachable");
  const card = el("article", { class: "node" + (n.reachable || n.checking ? "" : " unreachable"), id: "node-" + n.name,
                               "data-role": role });
  const tags = el("span", {});
  if (n.here) tags.append(el("span", { class: "tag" }, "this page's node"));
  card.append(el("h2", {}, el("span", {}, n.name), tags));
  card.append(el("div", { class: "role " + role, id: "role-" + n.name }, role));
  const dl = el("dl", {});
  if (!n.reachable) {
    if (n.heardBy && n.heardBy.role) {
      fact(dl, "its heartbeats say", `${n.heardBy.role}, term ${n.heardBy.term}` +
           (n.heardBy.services ? ", holds the service IPs" : ""), "tag warn", "heard-" + n.name);
    }
    if (v) fact(dl, "last seen", `${v.role}, term ${v.term}, ${n.age === null ? "?" : n.age + " s ago"}`);
    card.append(dl);
    return card;
  }
  if (role === "primary") {
    const since = primarySince(pair, n.name);
    if (since) fact(dl, "primary since", (since.exact ? "" : "at least ") + clock(since.at));
  }
  fact(dl, "term", v.term);
  const pg = v.pg || {};
  const tli = pg.timeline === undefined || pg.timeline === null ? null : pg.timeline;
  fact(dl, "timeline", tli !== null ? tli : (v.pg ? "unknown" : "reading..."));
  fact(dl, v.role === "primary" ? "WAL position" : "received up to", v.lsn || "unknown");
  if (v.role === "standby") fact(dl, "replayed up to", pg.replay_lsn || v.replay_lsn || "unknown");
  if (v.role === "standby") fact(dl, "streaming", v.streaming ? "yes" : "NO", v.streaming ? "" : "tag bad");
  if (v.role === "primary") {
    const rows = pg.replicas || [];
    fact(dl, "standbys", !v.pg ? "reading..." : rows.length ? rows.map((r) => `${r.name}: ${r.sync_state}`).join(", ")
                                                             : "none connected");
  }
  fact(dl, "service IPs", v.services ? (v.service_ips.join(", ") || "held") : "not here");
  if (v.reporting) fact(dl, "reporting IP", v.reporting.held ? v.reporting.address : "not here");
  const flags = el("span", {});
  if (v.fenced) flags.append(el("span", { class: "tag bad" }, "fenced"));
  if (v.maintenance) flags.append(el("span", { class: "tag warn" }, "maintenance"));
  if (v.role === "primary" && v.degraded) flags.append(el("span", { class: "tag bad" }, "degraded"));
  if (v.role === "standby") flags.append(el("span", { class: v.eligible ? "tag ok" : "tag warn" }, v.eligible ? "eligible" : "not eligible"));
  if (v.services_healthy === false) flags.append(el("span", { class: "tag bad" }, "services unhealthy"));
  if (flags.childNodes.length) fact(dl, "state", flags);
  const heard = Object.entries(v.peer_heard_s_ago || {}).map(([k, s]) => `${k} ${s === null ? "never" : seconds(s) + " ago"}`);
  fact(dl, `heard ${v.peer}`, heard.join(", "));
  card.append(dl);
  return card;
}

function riskText(r) {
  switch (r.exposure) {
    case "nothing": return "nothing: the standby has every acknowledged commit";
    case "up_to_lag": return `up to ${bytes(r.lag_bytes)} of acknowledged commits (${r.reason === "degraded" ? "sync degraded" : "async"})`;
    case "no_failover": return r.reason === "not_eligible" ? "no automatic failover: the standby is not eligible"
                                                           : "no automatic failover: no standby is heard";
    default: return `unknown (${r.reason.replace(/_/g, " ")})`;
  }
}

function pairFacts(pair, samples) {
  const dl = document.getElementById("pair-facts");
  dl.replaceChildren();
  const views = pair.names.map((n) => pair.nodes[n]).filter((n) => n.reachable && n.view).map((n) => n.view);
  const primary = views.find((v) => v.role === "primary");
  const standby = views.find((v) => v.role === "standby");
  const last = samples.length ? samples[samples.length - 1] : null;
  fact(dl, "primary", pair.primaries.length ? pair.primaries.join(" and ") : "none", pair.primaries.length === 1 ? "" : "tag bad",
       "fact-primary");
  const lagB = last ? last.lag_bytes : (standby || primary || pair.here).lag_bytes;
  fact(dl, "lag", `${bytes(lagB)}, ${seconds(last ? last.lag_s : null)}`, "", "fact-lag");
  let sync = "unknown";
  if (primary) {
    const rows = (primary.pg && primary.pg.replicas) || [];
    sync = rows.length ? rows.map((r) => `${r.name} ${r.sync_state}`).join(", ")
                       : (primary.peer_sync ? "in sync" : (primary.durability === "sync" ? "NOT in sync" : "async"));
  } else if (standby) {
    sync = standby.peer_sync ? "in sync (as the primary last said)" : "not in sync";
  }
  fact(dl, "sync state", `${sync} (durability ${pair.here.durability}, ${pair.here.mode} mode)`, "", "fact-sync");
  // The standby knows whether it would take over; the primary whether commits wait for it.
  const risk = [standby, primary, pair.here].find((v) => v && v.risk.exposure !== "unknown") || pair.here;
  const risk_ = risk.risk;
  fact(dl, "a failover now would lose", riskText(risk_), risk_.exposure === "nothing" ? "" : "tag warn", "fact-risk");
  const holders = pair.holders.length ? pair.holders.join(" and ") : "nobody";
  fact(dl, "service IPs on", holders, pair.holders.length === 1 ? "" : "tag bad", "fact-holders");
  if (pair.here.reporting) fact(dl, "reporting IP on", pair.reporting.length ? pair.reporting.join(" and ") : "nobody");
}

function graph(samples) {
  const svg = document.getElementById("lag-graph");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const known = samples.filter((s) => s.lag_bytes !== null);
  const caption = document.getElementById("lag-caption");
  if (!samples.length) { caption.textContent = "no samples yet"; return; }
  const t0 = samples[0].t;
  const t1 = Math.max(samples[samples.length - 1].t, t0 + 1);
  const top = Math.max(0, ...known.map((s) => s.lag_bytes));
  const max = Math.max(1, top);
  const x = (t) => ((t - t0) / (t1 - t0)) * 600;
  const y = (b) => 125 - (b / max) * 115;
  let run = [];
  const flush = () => {
    if (run.length) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", run.join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", "#005cc5");
      line.setAttribute("stroke-width", "2");
      svg.append(line);
    }
    run = [];
  };
  for (const s of samples) {
    if (s.lag_bytes === null) { flush(); continue; }  // a gap: nothing known then (no standby, no primary)
    run.push(x(s.t).toFixed(1) + "," + y(s.lag_bytes).toFixed(1));
  }
  flush();
  caption.textContent = `lag in bytes over the last ${Math.round((t1 - t0) / 60) || 1} min (top: ${bytes(top)}); gaps: no standby or no primary known`;
}

function describe(e) {
  if (e.event === "decision") return `${e.action.replace(/_/g, " ")}: ${e.detail || ""} (${e.reason})`;
  if (e.event === "alert" || e.event === "alert_resolved") return `${e.kind || e.alert || ""} ${e.detail || e.message || ""}`.trim();
  const skip = new Set(["time", "node", "event"]);
  return Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}

function timeline(pair) {
  const body = document.querySelector("#timeline tbody");
  body.replaceChildren();
  for (const e of pair.timeline.slice(0, TIMELINE_ROWS)) {
    const cls = isPromotion(e) ? "decision failover" : e.event === "decision" ? "decision" : NOISE.has(e.event) ? "noise" : "";
    body.append(el("tr", { class: cls }, el("td", {}, clock(e.time)), el("td", {}, e.node), el("td", {}, e.event),
                   el("td", {}, describe(e))));
  }
  const box = document.getElementById("last-failover");
  const p = pair.timeline.find(isPromotion);
  if (p) {
    const why = p.event === "decision" ? `${p.reason}: ${p.detail || ""}` : p.event.replace(/_/g, " ");
    box.replaceChildren(el("strong", {}, `Last promotion: ${p.node} at ${clock(p.time)}`), " - ", why);
    box.hidden = false;
  } else {
    box.hidden = true;
  }
}

function draw(doc) {
  const pair = merge(doc);
  document.getElementById("cluster").textContent = pair.here.cluster;
  document.getElementById("meta").textContent =
    `viewed from ${pair.here.node}, updated ${clock(pair.here.time)} UTC`;
  document.getElementById("banners").replaceChildren(...banners(pair));
  document.getElementById("nodes").replaceChildren(...pair.names.map((n) => nodeCard(pair, pair.nodes[n])));
  pairFacts(pair, doc.samples || []);
  graph(doc.samples || []);
  timeline(pair);
}

// ---- polling -------------------------------------------------------------------------------------

function askToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message || "";
}

async function poll() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch("pair.json", { headers, signal: ctl.signal, cache: "no-store" });
    if (r.status === 401) {
      askToken(token ? "that token was refused" : "");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const doc = await r.json();
    lastOk = Date.now();
    document.getElementById("conn").replaceChildren();
    draw(doc);
  } catch (err) {
    const since = lastOk ? ` (last answer ${Math.round((Date.now() - lastOk) / 1000)} s ago)` : "";
    document.getElementById("conn").replaceChildren(
      el("div", { class: "banner loud" }, `This node's agent does not answer: ${err.message || err}${since}`));
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("standby-token", token);
  document.getElementById("token").value = "";
  document.getElementById("token-form").hidden = true;
});

poll();
