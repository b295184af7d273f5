// The Metamorph dashboard: a client of the JSON API served next to it.
//
// Safety rules (see docs/DESIGN.md, "Security"): data from the API (ids, types, payloads, errors) only ever
// reaches the page as text (textContent / text nodes), never as HTML, and handlers are attached with
// addEventListener, never built from strings. The API token lives in sessionStorage and travels in the
// Authorization header, never in a cookie, so another site cannot make the browser act (no CSRF). For the
// same reason the live stream is read with fetch() rather than EventSource, which cannot send that header.
"use strict";

const TOKEN_KEY = "metamorph.token";
const $ = (id) => document.getElementById(id);
const VIEWS = ["list", "workflow", "schedules", "start"];
const state = {
  view: "list",
  cursors: [null], // cursors[i]: the cursor of page i (null: the first page)
  firsts: [0], // firsts[i]: how many rows come before page i
  nextCursor: null,
  selected: null,
  readOnly: false, // set after the server answered 403 to an action: the actions are then disabled
  stream: null, // {id, box, abort: AbortController}
  resetChoice: null, // {id, seq}: the event picked for a reset
};

class ApiError extends Error {
  constructor(error, message, status) {
    super(message);
    this.error = error;
    this.status = status;
  }
}

// el("a", {href: "#x", class: "c"}, "text", otherNode): children are nodes or plain text.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (typeof value === "function") node.addEventListener(key, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const enc = encodeURIComponent;
const workflowPath = (id) => "/workflows/" + enc(id);
const workflowHref = (id) => "#/w/" + enc(id);
const workflowLink = (id) => el("a", { href: workflowHref(id), text: id });
const badge = (status) => el("span", { class: "s " + String(status || "").replace(/[^a-z_]/g, ""), text: status });
const show = (value) => (value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value));
const token = () => sessionStorage.getItem(TOKEN_KEY);
// A timestamp as "2026-11-29 08:15:58Z" (UTC, to the second); anything else unchanged.
function when(value) {
  if (typeof value === "number" && value > 1e11) value = new Date(value).toISOString(); // epoch milliseconds
  if (typeof value !== "string" || !/^\d{4}-\d\d-\d\dT/.test(value)) return value === null || value === undefined ? "" : String(value);
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString().slice(0, 19).replace("T", " ") + "Z";
}

function authHeaders(extra) {
  const headers = { ...extra };
  if (token()) headers.Authorization = "Bearer " + token();
  return headers;
}

async function api(path, method = "GET", body = undefined) {
  const headers = authHeaders({ Accept: "application/json" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "omit", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (exc) {
    throw new ApiError("Unreachable", String(exc), 0);
  }
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || "HTTP " + response.status;
    if (response.status === 403) markReadOnly();
    throw new ApiError(error, (data && data.message) || response.statusText, response.status);
  }
  return data;
}

function describeError(exc) {
  const hint = exc.status === 401 ? " (enter a valid API token above)"
    : exc.status === 403 ? " (this token may only read)" : "";
  return (exc.error || "Error") + ": " + (exc.message || "") + hint;
}

function showError(exc) {
  const box = $("error");
  box.textContent = describeError(exc);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// A read-only token learns it on its first refused action; from then on every action button is disabled.
function markReadOnly() {
  state.readOnly = true;
  applyReadOnly();
}

function applyReadOnly() {
  for (const button of document.querySelectorAll("button.acts")) {
    button.disabled = state.readOnly;
    button.title = state.readOnly ? "this token may only read" : "";
  }
}

function setResult(box, kind, text) {
  if (!box) return;
  box.className = kind;
  box.textContent = text;
}

// -- the list ---------------------------------------------------------------------------------------------
function isoOf(localValue) {
  if (!localValue) return null;
  const date = new Date(localValue);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

function listFilters() {
  const q = new URLSearchParams();
  if ($("status").value) q.set("status", $("status").value);
  if ($("type").value.trim()) q.set("type", $("type").value.trim());
  for (const item of $("search").value.split(";")) if (item.trim()) q.append("search", item.trim());
  const after = isoOf($("started-after").value);
  const before = isoOf($("started-before").value);
  if (after) q.set("started_after", after);
  if (before) q.set("started_before", before);
  return q;
}

async function loadList() {
  const page = state.cursors.length - 1;
  const q = listFilters();
  const filters = q.toString();
  q.set("limit", $("limit").value);
  if (state.cursors[page]) q.set("cursor", state.cursors[page]);
  let data;
  try {
    data = await api("/workflows?" + q);
  } catch (exc) {
    showError(exc);
    $("list").replaceChildren();
    $("page").textContent = "";
    $("count").textContent = "";
    return;
  }
  clearError();
  const rows = data.workflows || [];
  $("list").replaceChildren(...rows.map((w) => el("tr", { "data-status": w.status },
    el("td", { class: "id" }, workflowLink(w.id)),
    el("td", { class: "type", text: w.type }),
    el("td", {}, badge(w.status)),
    el("td", { class: "muted", text: when(w.created_at), title: w.created_at }),
    el("td", { class: "muted", text: when(w.updated_at), title: w.updated_at }),
    el("td", { class: "attrs" }, ...Object.entries(w.search || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => el("code", { text: `${k}=${show(v)}` }))))));
  const first = state.firsts[page];
  state.nextCursor = data.next_cursor || null;
  $("page").textContent = rows.length ? `${first + 1}–${first + rows.length}` : "no workflows";
  $("prev").disabled = page === 0;
  $("next").disabled = !state.nextCursor;
  api("/workflows/count" + (filters ? "?" + filters : ""))
    .then((c) => { $("count").textContent = `of ${c.count}`; })
    .catch(() => { $("count").textContent = ""; });
}

function refilter() {
  state.cursors = [null];
  state.firsts = [0];
  loadList();
}

// -- one workflow -----------------------------------------------------------------------------------------
function table(rows, columns, attrs) {
  rows = rows || [];
  if (!rows.length) return el("p", { class: "muted", text: "none" });
  columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { text: c })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...columns.map((c) => cell(c, r[c]))))));
}

function cell(column, value) {
  if (value === null || value === undefined) return el("td", { class: "muted", text: "" });
  if (column === "child_id" || column === "parent_id") return el("td", { class: "id" }, workflowLink(String(value)));
  if (column === "traceback") return el("td", {}, el("details", {}, el("summary", { text: "traceback" }), el("pre", { class: "traceback", text: value })));
  if (column === "status") return el("td", {}, badge(value));
  if (typeof value === "object") return el("td", {}, el("code", { text: JSON.stringify(value) }));
  if (/_at$/.test(column)) return el("td", { class: "muted", text: when(value), title: value });
  return el("td", { text: value });
}

function keyValues(obj, cls) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return el("p", { class: "muted", text: "none" });
  return el("table", { class: cls },
    el("tbody", {}, ...entries.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", {}, el("code", { text: show(v) }))))));
}

const BASE_FIELDS = new Set(["seq", "type", "at", "run_id", "status", "workflow_id", "epoch", "node"]);

// One line per event: its own fields, short; the full event under a <details>.
function timeline(events, onReset) {
  if (!events || !events.length) return el("p", { class: "muted", text: "no events yet" });
  return el("table", { class: "history" },
    el("thead", {}, el("tr", {}, ...["seq", "at", "event", "status", "details", ""].map((c) => el("th", { text: c })))),
    el("tbody", {}, ...events.map((e) => {
      const details = Object.fromEntries(Object.entries(e).filter(([k, v]) => !BASE_FIELDS.has(k) && v !== null && v !== undefined));
      const scalarFirst = Object.entries(details).sort(([, a], [, b]) => (typeof a === "object") - (typeof b === "object"));
      const short = scalarFirst.map(([k, v]) => `${k}=${show(v)}`).join("  ");
      const links = [];
      if (e.child_id) links.push(" → child ", workflowLink(String(e.child_id)));
      if (e.type === "WorkflowStarted" && e.parent_id) links.push(" ← parent ", workflowLink(String(e.parent_id)));
      const body = Object.keys(details).length
        ? el("details", {}, el("summary", { text: short.length > 140 ? short.slice(0, 140) + "…" : short }),
          el("pre", { text: JSON.stringify(details, null, 2) }))
        : el("span", { class: "muted", text: "" });
      return el("tr", { "data-seq": e.seq }, el("td", { text: e.seq }), el("td", { class: "muted", text: when(e.at), title: e.at }),
        el("td", { class: "event" }, e.type, ...links), el("td", {}, e.status ? badge(e.status) : ""), el("td", {}, body),
        el("td", {}, el("button", { type: "button", class: "acts small reset-here", title: "reset to this event", click: () => onReset(e.seq) }, "reset here")));
    })));
}

// Activities grouped by activity: the last attempt's status, then every attempt with its traceback.
function activities(rows) {
  rows = rows || [];
  if (!rows.length) return el("p", { class: "muted", text: "none" });
  const groups = new Map();
  for (const row of rows) {
    const key = String(row.activity_id);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(row);
  }
  return el("div", { class: "activities" }, ...[...groups.values()].map((attempts) => {
    const last = attempts[attempts.length - 1];
    return el("div", { class: "activity" },
      el("p", {}, el("strong", { text: last.name || "activity" }), ` #${last.activity_id} · queue ${last.queue || "-"} · `,
        `${attempts.length} attempt${attempts.length === 1 ? "" : "s"} · `, badge(last.status)),
      table(attempts, ["attempt", "status", "started_at", "finished_at", "retry_at", "input", "result", "error_type", "message", "traceback"]));
  }));
}

// Pending timers: the projection's rows when the API sends them, else derived from the history.
function pendingTimers(w) {
  if (Array.isArray(w.timers)) return w.timers.filter((t) => !t.status || t.status === "pending" || t.status === "started");
  const open = new Map();
  for (const e of w.history || []) {
    if (e.type === "TimerStarted") open.set(String(e.timer_id), { timer_id: e.timer_id, fire_at: e.fire_at, started_at: e.at });
    else if (e.type === "TimerFired" || e.type === "TimerCancelled") open.delete(String(e.timer_id));
  }
  return [...open.values()];
}

async function act(id, what, body, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  const box = $("action-result");
  try {
    const data = await api(workflowPath(id) + "/" + what, "POST", body);
    setResult(box, "ok", what.split("/")[0] + ": " + ("result" in data ? show(data.result) : "accepted"));
    setTimeout(() => { if (state.selected === id) loadDetail(id, true); }, 800);
  } catch (exc) {
    setResult(box, "error", describeError(exc));
  }
}

function actions(w) {
  const id = w.id;
  const name = el("input", { id: "call-name", placeholder: "name", size: 12 });
  const args = el("input", { id: "call-args", placeholder: "args as JSON array, e.g. [\"x\"]", size: 26 });
  const kind = el("select", { id: "call-kind" }, el("option", { text: "signal" }), el("option", { text: "query" }), el("option", { text: "update" }));
  const reason = el("input", { id: "reason", placeholder: "reason (terminate, pause)", size: 20 });
  const seqs = (w.history || []).map((e) => e.seq);
  const resetSeq = el("select", { id: "reset-seq" }, ...(w.history || []).map((e) => el("option", { value: e.seq, text: `${e.seq} · ${e.type}` })));
  // The event chosen for a reset survives a re-render of the same workflow (after an action, a refresh).
  const chosen = state.resetChoice && state.resetChoice.id === id && seqs.includes(state.resetChoice.seq) ? state.resetChoice.seq : null;
  if (seqs.length) resetSeq.value = String(chosen !== null ? chosen : seqs[seqs.length - 1]);
  resetSeq.addEventListener("change", () => { state.resetChoice = { id, seq: Number(resetSeq.value) }; });
  const call = () => {
    const box = $("action-result");
    let parsed = [];
    try { parsed = args.value.trim() ? JSON.parse(args.value) : []; } catch (exc) { setResult(box, "error", "args: " + exc.message); return; }
    if (!Array.isArray(parsed)) { setResult(box, "error", "args must be a JSON array"); return; }
    if (!name.value.trim()) { setResult(box, "error", "enter the handler name"); return; }
    const confirmText = kind.value === "query" ? null : `Send ${kind.value} "${name.value}" to workflow ${id}?`;
    act(id, kind.value + "/" + enc(name.value.trim()), { args: parsed }, confirmText);
  };
  const reasonBody = () => (reason.value ? { reason: reason.value } : {});
  const button = (key, label, handler) => el("button", { id: "act-" + key, type: "button", class: "acts", click: handler }, label);
  return el("div", {},
    el("div", { class: "actions" },
      button("cancel", "Cancel", () => act(id, "cancel", {}, `Cancel workflow ${id}?`)),
      reason,
      button("terminate", "Terminate", () => act(id, "terminate", reasonBody(), `Terminate workflow ${id}? No cleanup code runs.`)),
      button("retry", "Retry", () => act(id, "retry", {}, `Retry failed workflow ${id}?`)),
      button("pause", "Pause", () => act(id, "pause", reasonBody(), `Pause workflow ${id}? It takes no step until resumed.`)),
      button("resume", "Resume", () => act(id, "resume", {}, `Resume workflow ${id}?`))),
    el("div", { class: "actions" },
      el("label", {}, "reset to event ", resetSeq),
      button("reset", "Reset", () => {
        if (!resetSeq.value) { setResult($("action-result"), "error", "no event to reset to"); return; }
        const seq = Number(resetSeq.value);
        act(id, "reset", { seq }, `Reset workflow ${id} to event ${seq}? A new run replays the history up to and including it; the current run ends terminated.`);
      })),
    el("div", { class: "call" }, kind, name, args, el("button", { id: "act-call", type: "button", click: call }, "Send")),
    el("p", { id: "action-result", role: "status" }));
}

function chooseReset(seq) {
  const select = $("reset-seq");
  if (!select) return;
  select.value = String(seq);
  state.resetChoice = { id: state.selected, seq };
  select.scrollIntoView({ block: "center" });
  select.focus();
}

async function loadDetail(id, keepResult) {
  state.selected = id;
  const box = $("detail");
  const previous = keepResult && $("action-result") ? $("action-result").cloneNode(true) : null;
  let w;
  try {
    w = await api(workflowPath(id));
  } catch (exc) {
    if (state.selected !== id) return;
    box.replaceChildren(el("h2", {}, el("span", { class: "wid", text: id })), el("p", { class: "error", role: "alert", text: describeError(exc) }));
    return;
  }
  if (state.selected !== id) return; // the user moved on while this was loading
  const meta = el("p", { class: "muted meta" },
    `type ${w.type} · run ${w.run_id || "-"} · created ${when(w.created_at) || "-"} · updated ${when(w.updated_at) || "-"}` +
    (w.closed_at ? ` · closed ${when(w.closed_at)}` : ""));
  const links = el("p", { class: "links" });
  if (w.parent_id) links.append("parent ", workflowLink(w.parent_id), " ");
  if (w.continued_from) links.append(`continued as new from run ${w.continued_from} `);
  const runs = w.runs || [];
  const current = runs.find((r) => r.run_id === w.run_id);
  if (current && current.continued_to) links.append(`continued as new in run ${current.continued_to}`);
  const timers = pendingTimers(w);
  box.replaceChildren(...[
    el("h2", {}, el("span", { class: "wid", text: w.id }), " ", badge(w.status)),
    meta,
    links.childNodes.length ? links : null,
    el("button", { type: "button", id: "refresh", click: () => loadDetail(id) }, "Refresh"),
    actions(w),
    el("div", { class: "grid" },
      el("div", {}, el("h3", { text: "input" }), el("pre", { class: "input", text: JSON.stringify(w.input, null, 2) })),
      el("div", {}, el("h3", { text: "output" }), el("pre", { class: "output", text: JSON.stringify(w.output, null, 2) }))),
    w.error_type ? el("h3", { text: "error" }) : null,
    w.error_type ? el("pre", { class: "error", text: `${w.error_type}: ${w.error_message || ""}\n${w.error_traceback || ""}` }) : null,
    el("div", { class: "grid" },
      el("div", {}, el("h3", { text: "search attributes" }), keyValues(w.search, "search")),
      el("div", {}, el("h3", { text: "memo" }), keyValues(w.memo, "memo"))),
    el("h3", { text: `pending timers (${timers.length})` }), table(timers, ["timer_id", "fire_at", "started_at"], { class: "timers" }),
    el("h3", { text: "activities" }), activities(w.activities),
    el("h3", { text: "exceptions" }), table(w.exceptions, ["at", "activity", "attempt", "error_type", "message", "traceback"], { class: "exceptions" }),
    el("h3", { text: "children" }), table(w.children, undefined, { class: "children" }),
    el("h3", { text: "live stream" }), streamBox(id),
    el("h3", { text: "history" }), timeline(w.history, chooseReset),
    el("h3", { text: "signals" }), table(w.signals),
    el("h3", { text: "runs (continue-as-new chain)" }), table(runs, ["run_no", "run_id", "type", "status", "continued_from", "continued_to", "started_at", "closed_at"], { class: "runs" }),
  ].filter((node) => node !== null)); // replaceChildren would render null as the text "null"
  if (previous) $("action-result").replaceWith(previous);
  applyReadOnly();
}

// -- the live stream (Server-Sent Events read with fetch, so the bearer token travels as a header) -----------
function stopStream() {
  if (state.stream) state.stream.abort.abort();
  state.stream = null;
}

function streamBox(id) {
  if (state.stream && state.stream.id === id) return state.stream.box; // kept across refreshes
  stopStream();
  const box = el("div", { id: "stream" }, el("p", { id: "stream-state", class: "muted", text: "connecting…" }), el("ol", { id: "stream-items" }));
  state.stream = { id, box, abort: new AbortController(), last: 0 };
  readStream(state.stream);
  return box;
}

async function readStream(stream) {
  const status = stream.box.querySelector("#stream-state");
  const items = stream.box.querySelector("#stream-items");
  let retry = 1000;
  for (let attempt = 0; attempt < 50 && !stream.abort.signal.aborted; attempt++) {
    let response;
    try {
      response = await fetch(workflowPath(stream.id) + "/stream?after=" + stream.last, {
        headers: authHeaders({ Accept: "text/event-stream" }), credentials: "omit", cache: "no-store", signal: stream.abort.signal,
      });
    } catch {
      if (stream.abort.signal.aborted) return;
      status.textContent = "stream unreachable; retrying";
      await new Promise((r) => setTimeout(r, retry));
      continue;
    }
    if (response.status === 404) { status.textContent = "no stream"; return; }
    if (!response.ok || !response.body) {
      let message = "HTTP " + response.status;
      try { const data = await response.json(); message = `${data.error}: ${data.message}`; } catch { /* not JSON */ }
      status.textContent = "stream unavailable: " + message;
      return;
    }
    status.textContent = items.childElementCount ? "live" : "live · no items yet";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = { event: "message", id: null, data: [] };
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data.push(text);
            else if (field === "id") event.id = text;
            else if (field === "event") event.event = text;
            else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
          }
          if (event.event === "end") {
            let final = "";
            try { final = JSON.parse(event.data.join("\n")).status; } catch { /* keep empty */ }
            status.textContent = `ended (${final || "closed"}) · ${items.childElementCount} item${items.childElementCount === 1 ? "" : "s"}`;
            ended = true;
          } else if (event.event === "timeout") {
            ended = true;
          } else if (event.data.length) {
            const data = event.data.join("\n");
            let shown = data;
            try { shown = JSON.stringify(JSON.parse(data)); } catch { /* not JSON: show as sent */ }
            if (event.id !== null && /^\d+$/.test(event.id)) stream.last = Number(event.id);
            items.append(el("li", { value: event.id !== null && /^\d+$/.test(event.id) ? event.id : undefined }, el("code", { text: shown })));
            status.textContent = "live";
          }
        }
      }
    } catch {
      if (stream.abort.signal.aborted) return;
    }
    if (ended || stream.abort.signal.aborted) return;
    await new Promise((r) => setTimeout(r, retry));
  }
}

// -- schedules --------------------------------------------------------------------------------------------
function specText(spec) {
  spec = spec || {};
  const when = spec.cron ? `cron ${spec.cron}` : spec.every ? `every ${spec.every}s` : "";
  return [when, spec.timezone, spec.overlap ? `overlap ${spec.overlap}` : ""].filter(Boolean).join(" · ");
}

async function scheduleAct(s, action, confirmText) {
  if (!window.confirm(confirmText)) return;
  const box = $("schedule-result");
  try {
    const data = await api("/schedules/" + enc(s.id) + "/" + action, "POST", {});
    setResult(box, "ok", `${action} ${s.id}: ${data.result === null || data.result === undefined ? "done" : show(data.result)}`);
    loadSchedules(true);
  } catch (exc) {
    setResult(box, "error", `${action} ${s.id}: ${describeError(exc)}`);
  }
}

function scheduleRow(s) {
  const button = (action, label, text) => el("button", { type: "button", class: "acts " + action, click: () => scheduleAct(s, action, text) }, label);
  const recent = (s.recent_runs || []).slice().reverse();
  return el("tr", { class: "schedule" },
    el("td", { class: "id sid", text: s.id }),
    el("td", {}, el("div", { class: "type", text: (s.spec || {}).workflow_type || "" }), el("code", { class: "spec", text: specText(s.spec) })),
    el("td", {}, s.error ? el("span", { class: "error", text: s.error }) : s.paused ? badge("paused") : badge("running"),
      s.note ? el("div", { class: "muted note", text: s.note }) : null),
    el("td", { class: "next" }, ...(s.next_runs || []).slice(0, 3).map((t) => el("div", { class: "muted", text: when(t), title: t }))),
    el("td", { class: "recent" }, ...(recent.length ? recent.slice(0, 5).map((r) => el("div", {}, workflowLink(r.id), " ", badge(r.status || r.action)))
      : [el("span", { class: "muted", text: "none yet" })])),
    el("td", { class: "muted", text: `${s.fired || 0} fired · ${s.skipped || 0} skipped` }),
    el("td", { class: "schedule-actions" },
      s.paused ? button("resume", "Resume", `Resume schedule ${s.id}?`) : button("pause", "Pause", `Pause schedule ${s.id}? It fires no run until resumed.`),
      button("trigger", "Trigger now", `Start a run of schedule ${s.id} now?`)));
}

async function loadSchedules(keepResult) {
  if (!keepResult) setResult($("schedule-result"), "", "");
  let data;
  try {
    data = await api("/schedules");
  } catch (exc) {
    showError(exc);
    $("schedules").replaceChildren(el("p", { class: "error", role: "alert", text: describeError(exc) }));
    return;
  }
  clearError();
  const rows = data.schedules || [];
  $("schedules").replaceChildren(rows.length
    ? el("table", { class: "schedules" },
      el("thead", {}, el("tr", {}, ...["id", "workflow · spec", "state", "next runs", "recent runs", "counts", ""].map((c) => el("th", { text: c })))),
      el("tbody", {}, ...rows.map(scheduleRow)))
    : el("p", { class: "muted", text: "no schedules" }));
  applyReadOnly();
}

// -- the start form ---------------------------------------------------------------------------------------
function jsonField(id, label, kind) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  let value;
  try { value = JSON.parse(text); } catch (exc) { throw new Error(`${label}: not valid JSON (${exc.message})`); }
  const ok = kind === "array" ? Array.isArray(value) : value !== null && typeof value === "object" && !Array.isArray(value);
  if (!ok) throw new Error(`${label} must be a JSON ${kind}`);
  return value;
}

function numberField(id, label) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`${label} must be a number`);
  return value;
}

async function submitStart(event) {
  event.preventDefault();
  const box = $("start-result");
  const body = { type: $("start-type").value.trim() };
  try {
    if (!body.type) throw new Error("type is required");
    if ($("start-id").value) body.id = $("start-id").value;
    body.args = jsonField("start-args", "args", "array") || [];
    for (const [id, key] of [["start-if-running", "if_running"], ["start-if-closed", "if_closed"]]) if ($(id).value) body[key] = $(id).value;
    for (const [id, key] of [["start-delay", "start_delay"], ["start-timeout", "timeout"], ["start-priority", "priority"]]) {
      const value = numberField(id, key);
      if (value !== undefined) body[key] = value;
    }
    for (const [id, key] of [["start-search", "search"], ["start-memo", "memo"]]) {
      const value = jsonField(id, key, "object");
      if (value !== undefined) body[key] = value;
    }
  } catch (exc) {
    setResult(box, "error", exc.message);
    return;
  }
  setResult(box, "muted", "starting…");
  try {
    const data = await api("/workflows", "POST", body);
    setResult(box, "ok", "started " + data.id);
    location.hash = workflowHref(data.id);
  } catch (exc) {
    setResult(box, "error", describeError(exc));
  }
}

// -- navigation -------------------------------------------------------------------------------------------
function showView(name) {
  state.view = name;
  for (const view of VIEWS) $("view-" + view).hidden = view !== name;
  for (const link of document.querySelectorAll("nav.views a")) link.classList.toggle("current", link.id === "nav-" + name);
}

function route() {
  const hash = location.hash;
  if (hash.startsWith("#/w/")) {
    let id;
    try { id = decodeURIComponent(hash.slice(4)); } catch { id = hash.slice(4); }
    showView("workflow");
    if (state.stream && state.stream.id !== id) stopStream();
    $("detail").replaceChildren(el("p", { class: "muted", text: "loading…" }));
    loadDetail(id);
    return;
  }
  state.selected = null;
  stopStream();
  if (hash === "#/schedules") { showView("schedules"); loadSchedules(); }
  else if (hash === "#/start") { showView("start"); setResult($("start-result"), "", ""); }
  else { showView("list"); loadList(); }
}

function tokenChanged() {
  $("token").placeholder = token() ? "(set for this tab)" : "none";
  state.readOnly = false;
  applyReadOnly();
  stopStream();
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").placeholder = token() ? "(set for this tab)" : "none";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("token").value) sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    tokenChanged();
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenChanged();
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("search-id").value;
    if (id) location.hash = workflowHref(id);
  });
  for (const id of ["status", "type", "search", "started-after", "started-before", "limit"]) $(id).addEventListener("change", refilter);
  $("prev").addEventListener("click", () => {
    if (state.cursors.length > 1) { state.cursors.pop(); state.firsts.pop(); loadList(); }
  });
  $("next").addEventListener("click", () => {
    if (!state.nextCursor) return;
    const page = state.cursors.length - 1;
    state.firsts.push(state.firsts[page] + $("list").childElementCount);
    state.cursors.push(state.nextCursor);
    loadList();
  });
  $("schedules-refresh").addEventListener("click", () => loadSchedules());
  $("start-form").addEventListener("submit", submitStart);
  window.addEventListener("hashchange", route);
  api("/healthz").then((h) => { $("ns").textContent = "namespace " + h.namespace; }).catch(() => {});
  route();
  setInterval(() => {
    if (document.visibilityState !== "visible") return;
    if (state.view === "list") loadList();
  }, 5000);
});
