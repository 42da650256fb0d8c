// fedxrec page: plain JavaScript over the API (no build step). Everything the server sends is
// rendered with textContent, never as HTML.
"use strict";

const state = { history: [], titles: new Map(), cold: new Set(), maxK: 100 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function label(item) {
  return item.year ? `${item.title} (${item.year})` : item.title;
}

async function api(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) {
    const d = data && data.detail;
    const msg = Array.isArray(d) ? d.map((x) => `${x.loc.join(".")}: ${x.msg}`).join("; ") : String(d);
    throw new Error(`${r.status}: ${msg}`);
  }
  return data;
}

function status(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

// ------------------------------------------------------------------------------------------ history

let searchSeq = 0;
async function search() {
  const q = $("search").value.trim();
  const seq = ++searchSeq;
  const list = $("search-results");
  if (!q) { list.replaceChildren(); return; }
  try {
    const page = await api("GET", `v1/items?query=${encodeURIComponent(q)}&limit=10`);
    if (seq !== searchSeq) return; // a newer search is on its way
    list.replaceChildren(...page.items.map((it) => {
      state.titles.set(it.id, label(it));
      const add = el("button", { type: "button", textContent: "add", "data-id": String(it.id) });
      add.addEventListener("click", () => addToHistory(it.id));
      return el("li", { "data-id": String(it.id) }, el("span", { class: "title", textContent: label(it) }), add);
    }));
    if (!page.items.length) list.append(el("li", { textContent: "no title matches" }));
  } catch (e) { status(e.message, true); }
}

function addToHistory(id) {
  state.history = state.history.filter((x) => x !== id);
  state.history.push(id); // newest last
  renderHistory();
}

function renderHistory() {
  $("history").replaceChildren(...state.history.map((id) => {
    const rm = el("button", { type: "button", textContent: "remove" });
    rm.addEventListener("click", () => { state.history = state.history.filter((x) => x !== id); renderHistory(); });
    return el("li", { "data-id": String(id) }, el("span", { textContent: state.titles.get(id) || `item ${id}` }), rm);
  }));
  $("history-empty").hidden = state.history.length > 0;
  $("recommend").disabled = state.history.length === 0;
}

// ---------------------------------------------------------------------------------- recommendations

// One path, drawn as: history item —relation→ entity ←relation— recommended item
function pathLine(p) {
  const [h, t] = p.triples;
  return el(
    "div", { class: "path" },
    el("span", { class: "item", textContent: h.head_label }),
    el("span", { class: "rel", textContent: ` —${h.relation}→ ` }),
    el("span", { class: "entity", textContent: p.entity_label }),
    el("span", { class: "rel", textContent: ` ←${t.relation}— ` }),
    el("span", { class: "item", textContent: t.head_label }),
  );
}

async function recommend() {
  if (!state.history.length) return null;
  const k = Math.max(1, Math.min(state.maxK, parseInt($("k").value, 10) || 10));
  try {
    const res = await api("POST", "v1/recommend", { history: state.history, k, explain: true });
    $("recommendations").replaceChildren(...res.items.map((it) => {
      state.titles.set(it.id, label(it));
      const head = el("div", {},
        el("span", { class: "title", textContent: label(it) }),
        el("span", { class: "score", textContent: `score ${it.score.toFixed(4)}` }));
      if (state.cold.has(it.id)) head.append(el("span", { class: "badge", textContent: "new" }));
      const e = it.explanation;
      return el("li", { class: "rec", "data-id": String(it.id) }, head,
        el("p", { class: "sentence", textContent: e ? e.sentence : "" }),
        ...(e ? e.paths.map(pathLine) : []));
    }));
    status(`${res.items.length} recommendations for ${state.history.length} history items`);
    return res;
  } catch (e) { status(e.message, true); return null; }
}

// ------------------------------------------------------------------------------------ new items

function list(id) {
  return $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
}

async function register(ev) {
  ev.preventDefault();
  const out = $("register-result");
  const entities = {};
  for (const rel of ["director", "starring", "writer"]) {
    const v = list(`new-${rel}`);
    if (v.length) entities[rel] = v;
  }
  const body = { title: $("new-title").value, genres: list("new-genres"), text: $("new-text").value, entities };
  if ($("new-year").value) body.year = parseInt($("new-year").value, 10);
  const token = $("token").value;
  try {
    const res = await api("POST", "v1/items", body, token);
    state.cold.add(res.id);
    state.titles.set(res.id, label(res.item));
    const del = el("button", { type: "button", id: "delete-new", textContent: "delete it" });
    del.addEventListener("click", async () => {
      try {
        await api("DELETE", `v1/items/${res.id}`, undefined, token);
        state.cold.delete(res.id);
        out.replaceChildren(el("p", { id: "deleted", textContent: `Deleted item ${res.id}.` }));
        await recommend();
      } catch (e) { out.append(el("p", { class: "error", textContent: e.message })); }
    });
    out.replaceChildren(
      el("p", { id: "registered", textContent: `Registered "${label(res.item)}" as id ${res.id} (${res.neighbours} KG neighbours).` }),
      el("p", { id: "new-rank", textContent: await rankText(res.id) }),
      del,
    );
    await recommend();
  } catch (e) { out.replaceChildren(el("p", { class: "error", textContent: e.message })); }
}

// Where a new item ranks for the current history, among everything the API can rank (top maxK).
async function rankText(id) {
  if (!state.history.length) return "Add history items to see where it ranks.";
  const res = await api("POST", "v1/recommend", { history: state.history, k: state.maxK });
  const pos = res.items.findIndex((it) => it.id === id);
  return pos >= 0 ? `It ranks #${pos + 1} for your history.` : `It is not in the top ${state.maxK} for your history.`;
}

// --------------------------------------------------------------------------------------- start-up

async function start() {
  try {
    const spec = await api("GET", "openapi.json");
    state.maxK = spec.components.schemas.RecommendRequest.properties.k.maximum || state.maxK;
    $("k").max = String(state.maxK);
    const h = await api("GET", "health");
    status(`serving ${h.items} items (checkpoint ${h.checkpoint.id}, round ${h.checkpoint.meta.round ?? "-"})`);
  } catch (e) { status(`the API is not answering: ${e.message}`, true); }
  let timer = null;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 150); });
  $("recommend").addEventListener("click", recommend);
  $("clear-history").addEventListener("click", () => { state.history = []; renderHistory(); });
  $("register-form").addEventListener("submit", register);
  renderHistory();
}

start();
