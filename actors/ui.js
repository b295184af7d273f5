// The Metamorph dashboard: a client of the JSON API served next to it.
//
// Safety rules (see DESIGN.md, "Security"): data from the API (ids, types, payloads, errors) only ever
// reaches the page as text (textContent / text nodes), never as HTML, and handlers are attached with
// addEventListener, never built from strings. The API token lives in sessionStorage and travels in the
// Authorization header, never in a cookie, so another site cannot make the browser act (no CSRF).
"use strict";

const TOKEN_KEY = "metamorph.token";
const $ = (id) => document.getElementById(id);
const state = { offset: 0, nextOffset: null, selected: null };

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
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (typeof value === "function") node.addEventListener(key, value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const workflowPath = (id) => "/workflows/" + encodeURIComponent(id);
const workflowLink = (id) => el("a", { href: "#/w/" + encodeURIComponent(id), text: id });
const badge = (status) => el("span", { class: "s " + String(status || "").replace(/[^a-z]/g, ""), text: status });
const show = (value) => (value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value));

async function api(path, method = "GET", body = undefined) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
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

// -- the list ---------------------------------------------------------------------------------------------
async function loadList() {
  const limit = Number($("limit").value);
  const q = new URLSearchParams({ limit: String(limit), offset: String(state.offset) });
  if ($("status").value) q.set("status", $("status").value);
  if ($("type").value.trim()) q.set("type", $("type").value.trim());
  let data;
  try {
    data = await api("/workflows?" + q);
  } catch (exc) {
    showError(exc);
    $("list").replaceChildren();
    $("page").textContent = "";
    return;
  }
  clearError();
  const rows = data.workflows || [];
  $("list").replaceChildren(...rows.map((w) => el("tr", { "data-status": w.status },
    el("td", { class: "id" }, workflowLink(w.id)),
    el("td", { text: w.type }),
    el("td", {}, badge(w.status)),
    el("td", { class: "muted", text: w.updated_at || "" }))));
  state.nextOffset = data.next_offset;
  $("page").textContent = rows.length ? `${state.offset + 1}–${state.offset + rows.length}` : "no workflows";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = data.next_offset === null || data.next_offset === undefined;
}

// -- one workflow -----------------------------------------------------------------------------------------
function table(rows, columns) {
  rows = rows || [];
  if (!rows.length) return el("p", { class: "muted", text: "none" });
  columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return el("table", {},
    el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { text: c })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...columns.map((c) => cell(c, r[c]))))));
}

function cell(column, value) {
  if (value === null || value === undefined) return el("td", { class: "muted", text: "" });
  if (column === "child_id" || column === "parent_id") return el("td", { class: "id" }, workflowLink(String(value)));
  if (column === "traceback") return el("td", {}, el("details", {}, el("summary", { text: "traceback" }), el("pre", { text: value })));
  if (column === "status") return el("td", {}, badge(value));
  if (typeof value === "object") return el("td", {}, el("code", { text: JSON.stringify(value) }));
  return el("td", { text: value });
}

const BASE_FIELDS = new Set(["seq", "type", "at", "run_id", "status"]);

function timeline(events) {
  if (!events || !events.length) return el("p", { class: "muted", text: "no events yet" });
  return el("table", { class: "history" },
    el("thead", {}, el("tr", {}, ...["seq", "at", "event", "details"].map((c) => el("th", { text: c })))),
    el("tbody", {}, ...events.map((e) => {
      const details = Object.fromEntries(Object.entries(e).filter(([k]) => !BASE_FIELDS.has(k)));
      const body = Object.keys(details).length
        ? el("details", {}, el("summary", { text: Object.keys(details).join(", ") }), el("pre", { text: JSON.stringify(details, null, 2) }))
        : "";
      return el("tr", {}, el("td", { text: e.seq }), el("td", { class: "muted", text: e.at || "" }),
        el("td", { text: e.type }), el("td", {}, body));
    })));
}

function result(kind, text) {
  const box = $("action-result");
  if (!box) return;
  box.className = kind;
  box.textContent = text;
}

async function act(id, what, body, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  try {
    const data = await api(workflowPath(id) + "/" + what, "POST", body);
    result("ok", what.split("/")[0] + ": " + ("result" in data ? show(data.result) : "accepted"));
    setTimeout(() => { loadList(); if (state.selected === id) loadDetail(id, true); }, 800);
  } catch (exc) {
    result("error", describeError(exc));
  }
}

function actions(w) {
  const id = w.id;
  const name = el("input", { id: "call-name", placeholder: "name", size: 12 });
  const args = el("input", { id: "call-args", placeholder: "args as JSON array, e.g. [\"x\"]", size: 26 });
  const kind = el("select", { id: "call-kind" }, el("option", { text: "signal" }), el("option", { text: "query" }), el("option", { text: "update" }));
  const reason = el("input", { id: "reason", placeholder: "reason (terminate)", size: 16 });
  const call = () => {
    let parsed = [];
    try { parsed = args.value.trim() ? JSON.parse(args.value) : []; } catch (exc) { result("error", "args: " + exc.message); return; }
    if (!Array.isArray(parsed)) { result("error", "args must be a JSON array"); return; }
    if (!name.value.trim()) { result("error", "enter the handler name"); return; }
    const confirmText = kind.value === "query" ? null : `Send ${kind.value} "${name.value}" to workflow ${id}?`;
    act(id, kind.value + "/" + encodeURIComponent(name.value.trim()), { args: parsed }, confirmText);
  };
  return el("div", {},
    el("div", { class: "actions" },
      el("button", { id: "act-cancel", type: "button", click: () => act(id, "cancel", {}, `Cancel workflow ${id}?`) }, "Cancel"),
      reason,
      el("button", { id: "act-terminate", type: "button", click: () => act(id, "terminate", reason.value ? { reason: reason.value } : {}, `Terminate workflow ${id}? No cleanup code runs.`) }, "Terminate"),
      el("button", { id: "act-retry", type: "button", click: () => act(id, "retry", {}, `Retry failed workflow ${id}?`) }, "Retry")),
    el("div", { class: "call" }, kind, name, args, el("button", { id: "act-call", type: "button", click: call }, "Send")),
    el("p", { id: "action-result", role: "status" }));
}

async function loadDetail(id, keepResult) {
  state.selected = id;
  const box = $("detail");
  const previous = keepResult && $("action-result") ? $("action-result").cloneNode(true) : null;
  let w;
  try {
    w = await api(workflowPath(id));
  } catch (exc) {
    box.replaceChildren(el("h2", { text: id }), el("p", { class: "error", role: "alert", text: describeError(exc) }));
    return;
  }
  const meta = el("p", { class: "muted" }, `type ${w.type} · run ${w.run_id || "-"} · created ${w.created_at || "-"} · updated ${w.updated_at || "-"}`);
  if (w.parent_id) meta.append(" · parent ", workflowLink(w.parent_id));
  box.replaceChildren(...[
    el("h2", {}, el("span", { class: "wid", text: w.id }), " ", badge(w.status)),
    meta,
    el("button", { type: "button", click: () => loadDetail(id) }, "Refresh"),
    actions(w),
    el("h3", { text: "input" }), el("pre", { class: "input", text: JSON.stringify(w.input, null, 2) }),
    el("h3", { text: "output" }), el("pre", { class: "output", text: JSON.stringify(w.output, null, 2) }),
    w.error_type ? el("h3", { text: "error" }) : null,
    w.error_type ? el("pre", { class: "error", text: `${w.error_type}: ${w.error_message || ""}\n${w.error_traceback || ""}` }) : null,
    el("h3", { text: "history" }), timeline(w.history),
    el("h3", { text: "activities" }), table(w.activities),
    el("h3", { text: "exceptions" }), table(w.exceptions, ["at", "activity", "attempt", "error_type", "message", "traceback"]),
    el("h3", { text: "children" }), table(w.children),
    el("h3", { text: "signals" }), table(w.signals),
    el("h3", { text: "runs" }), table(w.runs),
  ].filter((node) => node !== null));  // replaceChildren would render null as the text "null"
  if (previous) $("action-result").replaceWith(previous);
}

// -- navigation -------------------------------------------------------------------------------------------
function route() {
  const hash = location.hash;
  if (hash.startsWith("#/w/")) {
    let id;
    try { id = decodeURIComponent(hash.slice(4)); } catch { id = hash.slice(4); }
    loadDetail(id);
  } else {
    state.selected = null;
    $("detail").replaceChildren(el("p", { class: "muted", text: "Select a workflow to see its history, activities and exceptions." }));
  }
}

function refilter() {
  state.offset = 0;
  loadList();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").placeholder = sessionStorage.getItem(TOKEN_KEY) ? "(set for this tab)" : "none";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("token").value) sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("token").placeholder = sessionStorage.getItem(TOKEN_KEY) ? "(set for this tab)" : "none";
    loadList();
    if (state.selected !== null) loadDetail(state.selected);
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").placeholder = "none";
    loadList();
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("search-id").value;
    if (id) location.hash = "#/w/" + encodeURIComponent(id);
  });
  $("status").addEventListener("change", refilter);
  $("type").addEventListener("change", refilter);
  $("limit").addEventListener("change", refilter);
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - Number($("limit").value)); loadList(); });
  $("next").addEventListener("click", () => { if (state.nextOffset !== null) { state.offset = state.nextOffset; loadList(); } });
  window.addEventListener("hashchange", route);
  api("/healthz").then((h) => { $("ns").textContent = "namespace " + h.namespace; }).catch(() => {});
  loadList();
  route();
  setInterval(() => { if (document.visibilityState === "visible") loadList(); }, 5000);
});
