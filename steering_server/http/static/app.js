// The compare-and-watch page: plain JavaScript over the server's own HTTP API (no build step, nothing fetched from
// elsewhere). Compare: POST /v1/steering/compare with stream: true, read as server-sent events from fetch (EventSource
// cannot POST). Watch: GET /v1/steering/monitor (server-sent events, observer role).
"use strict";

const $ = (id) => document.getElementById(id);
const MODES = ["none", "ablate", "add", "clamp"];
const POSITIONS = ["all", "prompt", "last_prompt", "generated"];
let info = null;
let watching = null; // AbortController of the monitor feed

function strengthRange(mode) {
  // Within the server's policy: without --allow-red-team an inducing ADD (or a CLAMP above the benign mean) is
  // refused, so the slider stops at 0. The server still judges every request (near-copies of a direction too).
  const red = info && info.limits.allow_red_team;
  if (mode === "ablate") return { min: 0, max: 1, step: 0.05, value: 1 };
  if (mode === "add") return { min: -4, max: red ? 4 : 0, step: 0.1, value: -1 };
  if (mode === "clamp") return { min: -4, max: red ? 4 : 0, step: 0.25, value: 0 };
  return { min: 0, max: 0, step: 1, value: 0 };
}

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label === undefined ? value : label;
  select.appendChild(o);
}

function addVariant(name, mode, direction, strength, positions, layers) {
  const tr = document.createElement("tr");
  tr.className = "variant";
  // A removal recipe may name its layers (the organism's clamps every layer up to its monitor layer); they belong
  // to that direction, so choosing another direction drops them (the server's default layers).
  tr.dataset.layers = (layers || []).join(",");
  const nameInput = Object.assign(document.createElement("input"), { className: "name", value: name });
  const modeSel = document.createElement("select");
  modeSel.className = "mode";
  MODES.forEach((m) => option(modeSel, m, m === "none" ? "unsteered" : m));
  modeSel.value = mode;
  const dirSel = document.createElement("select");
  dirSel.className = "direction";
  info.directions.forEach((d) => option(dirSel, d.name));
  if (direction) dirSel.value = direction;
  dirSel.onchange = () => { tr.dataset.layers = ""; };
  const range = Object.assign(document.createElement("input"), { type: "range", className: "strength-range" });
  const number = Object.assign(document.createElement("input"), { type: "number", className: "strength-value" });
  const posSel = document.createElement("select");
  posSel.className = "positions";
  POSITIONS.forEach((p) => option(posSel, p));
  posSel.value = positions || "all";
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "×", title: "remove" });
  remove.onclick = () => tr.remove();
  const strengthCell = document.createElement("div");
  strengthCell.className = "strength";
  strengthCell.append(range, number);
  const setRange = (keep) => {
    const r = strengthRange(modeSel.value);
    for (const el of [range, number]) Object.assign(el, { min: r.min, max: r.max, step: r.step });
    const v = keep !== undefined ? Math.min(r.max, Math.max(r.min, keep)) : r.value;
    range.value = number.value = v;
    const off = modeSel.value === "none";
    for (const el of [range, number, dirSel, posSel]) el.disabled = off;
  };
  modeSel.onchange = () => setRange();
  range.oninput = () => { number.value = range.value; };
  number.onchange = () => { range.value = number.value; };
  setRange(strength);
  const cells = [nameInput, modeSel, dirSel, strengthCell, posSel, remove];
  for (const c of cells) {
    const td = document.createElement("td");
    td.appendChild(c);
    tr.appendChild(td);
  }
  $("variants").querySelector("tbody").appendChild(tr);
}

function variantsFromForm() {
  return [...document.querySelectorAll("#variants tr.variant")].map((tr) => {
    const mode = tr.querySelector(".mode").value;
    const steering = mode === "none" ? [] : [{
      direction: tr.querySelector(".direction").value,
      mode,
      strength: Number(tr.querySelector(".strength-value").value),
      positions: tr.querySelector(".positions").value,
      ...(tr.dataset.layers ? { layers: tr.dataset.layers.split(",").map(Number) } : {}),
    }];
    return { name: tr.querySelector(".name").value, steering };
  });
}

function colour(score) {
  // z-scored readings: red above the benign mean, blue below, saturating at |z| = 4.
  if (score === undefined || score === null || !isFinite(score)) return "transparent";
  const a = Math.min(Math.abs(score) / 4, 1) * 0.55;
  return score >= 0 ? `rgba(214, 48, 39, ${a})` : `rgba(49, 104, 200, ${a})`;
}

function legend() {
  const el = $("legend");
  el.textContent = "z: ";
  for (const z of [-4, -2, -1, 0, 1, 2, 4]) {
    const s = Object.assign(document.createElement("span"), { className: "swatch", title: `z = ${z}` });
    s.style.background = colour(z);
    el.append(s, `${z} `);
  }
}

function describe(steering) {
  if (!steering.length) return "no steering";
  return steering.map((t) => `${t.mode} ${t.strength} ${t.direction}${t.positions !== "all" ? " @" + t.positions : ""}` +
    (t.layers && t.layers.length ? ` layers ${t.layers.join(",")}` : "")).join(", ");
}

function fmt(x) { return x === null || x === undefined ? "–" : (x >= 0 ? "+" : "") + x.toFixed(2); }

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

async function* sse(response) {
  // Server-sent events from a fetch body: blocks separated by a blank line, each `data: ...`.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function runCompare() {
  showError("");
  const outputs = $("outputs");
  outputs.dataset.state = "running";
  outputs.innerHTML = "";
  $("run").disabled = true;
  $("run_state").textContent = "running…";
  const variants = variantsFromForm();
  const colourBy = $("colour_by").value;
  const body = {
    max_tokens: Number($("max_tokens").value),
    temperature: Number($("temperature").value),
    seed: Number($("seed").value),
    variants,
    stream: true,
  };
  if (colourBy) body.monitor = { directions: [colourBy, ...info.directions.map((d) => d.name).filter((n) => n !== colourBy)] };
  const user = $("prompt").value;
  if ($("chat").checked) {
    body.messages = [];
    if ($("system").value) body.messages.push({ role: "system", content: $("system").value });
    body.messages.push({ role: "user", content: user });
  } else {
    body.prompt = user;
  }
  const columns = [];
  try {
    const response = await fetch("/v1/steering/compare", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    for await (const data of sse(response)) {
      if (data === "[DONE]") break;
      const ev = JSON.parse(data);
      if (ev.error) throw new Error(ev.error.message);
      if (ev.object === "steering.compare.start") {
        ev.variants.forEach((name, i) => columns.push(column(name, variants[i] ? variants[i].steering : [])));
      } else if (ev.object === "steering.compare.token") {
        const c = columns[ev.variant];
        const span = Object.assign(document.createElement("span"), { className: "tok", textContent: ev.text_delta });
        const score = ev.scores[colourBy];
        span.style.background = colour(score);
        span.title = `#${ev.index} id ${ev.token_id}: ` + Object.entries(ev.scores).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
        span.dataset.index = ev.index;
        c.text.appendChild(span);
        c.tokens.push(span);
      } else if (ev.object === "steering.compare.variant") {
        const c = columns[ev.variant];
        if (ev.text_tail) c.text.append(ev.text_tail);
        c.status.textContent = ev.stop_reason;
        const m = ev.monitor.find((s) => s.direction === colourBy) || ev.monitor[0];
        if (m) c.scores.textContent = `${m.direction}@${m.layer}: prompt ${fmt(m.prompt_score)}, response ${fmt(m.response_score)}, max ${fmt(m.max_score)}${m.post_intervention ? " (post-intervention)" : ""}`;
        c.el.dataset.tokenIds = JSON.stringify(ev.token_ids);
        c.el.dataset.text = ev.text;
      } else if (ev.object === "steering.compare") {
        ev.variants.forEach((v, i) => markDivergence(columns[i], v.diverges_at, i));
        $("run_state").textContent = `seed ${ev.seed}`;
      }
    }
    outputs.dataset.state = "done";
  } catch (e) {
    showError(e.message);
    outputs.dataset.state = "error";
    $("run_state").textContent = "";
  } finally {
    $("run").disabled = false;
  }
}

function column(name, steering) {
  const el = Object.assign(document.createElement("div"), { className: "column" });
  el.dataset.name = name;
  const h = document.createElement("h3");
  const title = Object.assign(document.createElement("span"), { className: "name", textContent: name });
  const status = Object.assign(document.createElement("span"), { className: "status", textContent: "streaming…" });
  h.append(title, status);
  const terms = Object.assign(document.createElement("div"), { className: "terms", textContent: describe(steering) });
  const text = Object.assign(document.createElement("div"), { className: "text" });
  const scores = Object.assign(document.createElement("div"), { className: "scores" });
  el.append(h, terms, text, scores);
  $("outputs").appendChild(el);
  return { el, status, text, scores, tokens: [], title };
}

function markDivergence(c, at, i) {
  c.el.dataset.divergesAt = at === null ? "" : String(at);
  if (i === 0) return;
  const badge = Object.assign(document.createElement("span"), { className: "badge" });
  badge.textContent = at === null ? "same tokens" : `diverges at token ${at}`;
  c.title.append(" ", badge);
  if (at !== null && c.tokens[at]) {
    c.tokens[at].classList.add("diverge"); // the ▼ is CSS content: the text stays the model's
  }
}

// The monitor feed: one row per event, alerts highlighted and listed above the table.
async function toggleWatch() {
  if (watching) {
    watching.abort();
    watching = null;
    $("watch_toggle").textContent = "Watch";
    $("watch_state").textContent = "stopped";
    return;
  }
  watching = new AbortController();
  $("watch_toggle").textContent = "Stop";
  $("watch_state").textContent = "connecting…";
  const headers = {};
  if ($("token").value) headers.Authorization = `Bearer ${$("token").value}`;
  try {
    const query = $("alerts_only").checked ? "?alerts_only=true" : "";
    const response = await fetch(`/v1/steering/monitor${query}`, { headers, signal: watching.signal });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    $("watch_state").textContent = "watching";
    for await (const data of sse(response)) feedRow(JSON.parse(data));
  } catch (e) {
    if (e.name !== "AbortError") $("watch_state").textContent = e.message;
  } finally {
    watching = null;
    $("watch_toggle").textContent = "Watch";
  }
}

function feedRow(ev) {
  // One finished request's monitor summary (gRPC's MonitorEvent as JSON).
  if (ev.error) { $("watch_state").textContent = ev.error.message; return; }
  const body = $("feed").querySelector("tbody");
  const tr = document.createElement("tr");
  const alerts = ev.alerts || [];
  if (alerts.length) tr.className = "alert";
  const when = new Date(ev.time * 1000).toLocaleTimeString();
  const who = `${ev.request_id} ${ev.front_end || "-"}/${ev.rpc}${ev.variant ? " " + ev.variant : ""}`;
  const what = `${ev.stop_reason || ""} ${ev.usage.completion_tokens} tok; ${describe(ev.steering)}` +
    (ev.policy_applied ? " (policy)" : "") + (ev.dropped ? `; ${ev.dropped} dropped before` : "");
  const scores = ev.monitor.map((m) => `${m.direction} p ${fmt(m.prompt_score)} r ${fmt(m.response_score)} max ${fmt(m.max_score)}`).join("; ");
  for (const text of [when, who, what, scores]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  body.prepend(tr);
  while (body.children.length > 500) body.lastChild.remove();
  for (const a of alerts) {
    const el = Object.assign(document.createElement("div"), { className: "alert" });
    const at = a.token_index === null ? "at the prompt" : `at token ${a.token_index}`;
    el.textContent = `${when} ${ev.request_id}: ${a.direction} ${fmt(a.score)} ≥ ${fmt(a.threshold)} ${at} (${a.action}, ${a.source})`;
    $("alerts").prepend(el);
  }
}

async function init() {
  legend();
  try {
    const response = await fetch("/v1/steering/info");
    info = await response.json();
    if (!response.ok) throw new Error(info.error.message);
  } catch (e) {
    showError(`cannot read the server's info: ${e.message}`);
    return;
  }
  $("model").textContent = `${info.model.id} · ${info.model.num_layers} layers · ${info.model.device}`;
  $("redteam").textContent = info.limits.allow_red_team ? "red-teaming allowed" : "red-teaming off: no inducing";
  if (info.limits.allow_red_team) $("redteam").classList.add("warn");
  $("policy").textContent = (info.policy.terms.length
    ? `policy${info.policy.enforced ? " (enforced)" : ""}: ${describe(info.policy.terms)}` : "no policy") +
    (info.policy.alerts.length ? ` · ${info.policy.alerts.length} alert rule(s): ` +
      info.policy.alerts.map((r) => `${r.direction} ${r.scope} ≥ ${r.threshold === null ? "calibrated" : r.threshold} → ${r.action}`).join(", ") : "");
  info.directions.forEach((d) => option($("colour_by"), d.name));
  $("watch").hidden = !(info.features && info.features.watch);
  const d = info.directions[0];
  addVariant("unsteered", "none");
  if (d) {
    const r = d.removal;
    const where = r.positions === "all" ? "" : `${r.positions}-`;
    addVariant(`${r.mode}-${where}${d.name}`, r.mode, d.name, r.strength, r.positions, r.layers);
    if (r.mode !== "ablate" || r.positions !== "all") addVariant(`ablate-${d.name}`, "ablate", d.name, 1, "all");
    addVariant(`add-${d.name}`, "add", d.name, -1, "all");
  }
  $("add_variant").onclick = () => addVariant(`variant-${document.querySelectorAll("#variants tr.variant").length + 1}`,
    "ablate", d && d.name, 1, "all");
  $("run").onclick = runCompare;
  $("watch_toggle").onclick = toggleWatch;
  document.body.dataset.ready = "true";
}

init();
