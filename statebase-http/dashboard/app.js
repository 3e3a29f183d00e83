// The statebase dashboard: a client of the public /v1 API, with the key the person enters
// (kept in this tab's sessionStorage only). Every value from the API is put in the page as
// text (textContent), never parsed as HTML.

const KEY = "statebase.api_key";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const notice = document.getElementById("notice");

// ----- the DOM, as text -----

/** An element with attributes (`on*` take functions) and children (strings become text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
  main.querySelector("h1")?.focus?.();
}

function say(message, ok = false) {
  notice.textContent = message;
  notice.className = ok ? "ok" : "";
  notice.hidden = !message;
}

const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const count = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const json = (v) => JSON.stringify(v, null, 2);

function table(headers, rows, id) {
  return h("div", { class: "table-wrap" },
    h("table", { id },
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
      h("tbody", {}, rows)));
}

// ----- the API -----

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const e = body?.error ?? {};
    let message = e.message ?? `HTTP ${status}`;
    if (status === 401) message = "That API key was not accepted. Check it and sign in again.";
    if (status === 429) {
      message = `Too many requests: try again in ${retryAfter ? count(Number(retryAfter), "second") : "a few seconds"}.`;
    }
    super(message);
    this.status = status;
    this.code = e.code;
  }
}

async function api(method, path, body) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY) ?? "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  const text = await r.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, parsed, r.headers.get("Retry-After"));
  return parsed;
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
};

// ----- diffs and trees -----

/** What changed from `a` to `b`, by JSON pointer: [{op, path, from, to}]. */
function diff(a, b, path = "", out = []) {
  const isObj = (v) => v !== null && typeof v === "object";
  if (isObj(a) && isObj(b) && Array.isArray(a) === Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of [...keys].sort()) {
      const p = `${path}/${String(k).replaceAll("~", "~0").replaceAll("/", "~1")}`;
      if (!(k in b)) out.push({ op: "removed", path: p, from: a[k] });
      else if (!(k in a)) out.push({ op: "added", path: p, to: b[k] });
      else diff(a[k], b[k], p, out);
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    out.push({ op: "modified", path: path || "/", from: a, to: b });
  }
  return out;
}

function diffList(changes, limit = 300) {
  if (!changes.length) return h("p", { class: "muted" }, "No changes.");
  const short = (v) => { const s = JSON.stringify(v); return s.length > 200 ? `${s.slice(0, 200)}…` : s; };
  const items = changes.slice(0, limit).map((c) => h("li", { class: c.op },
    c.op === "added" ? `+ ${c.path}: ${short(c.to)}`
      : c.op === "removed" ? `− ${c.path}: ${short(c.from)}`
        : `~ ${c.path}: ${short(c.from)} → ${short(c.to)}`));
  const more = changes.length > limit ? h("li", { class: "muted" }, `… and ${changes.length - limit} more`) : null;
  return h("ul", { class: "diff" }, items, more);
}

function tree(value, name = "state", open = true) {
  if (value === null || typeof value !== "object") {
    return h("div", { class: "tree-leaf" }, `${name}: ${JSON.stringify(value)}`);
  }
  const entries = Object.entries(value);
  const label = Array.isArray(value) ? `${name} [${entries.length}]` : `${name} {${entries.length}}`;
  return h("details", { class: "tree", open },
    h("summary", {}, label), entries.map(([k, v]) => tree(v, k, false)));
}

// ----- views -----

function signIn() {
  nav.hidden = true;
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "sb_…", "aria-label": "API key", size: 36 });
  const form = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api("GET", "/v1/dashboard/stats");
      say("");
      location.hash = "#/sessions";
      route();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      say(err.message);
      input.select();
      input.focus();
    }
  } }, h("label", {}, "API key", input), h("button", { class: "primary", type: "submit" }, "Sign in"));
  show(h("h1", { tabindex: -1 }, "Sign in"),
    h("p", { class: "muted" }, "The key stays in this tab and is sent only to this server."), form);
  input.focus();
}

async function sessions(params) {
  const filters = { agent_id: params.get("agent_id") ?? "", user_id: params.get("user_id") ?? "" };
  const after = params.get("starting_after") ?? "";
  const page = await api("GET", `/v1/sessions${query({ ...filters, limit: 20, starting_after: after })}`);
  const agent = h("input", { name: "agent_id", value: filters.agent_id, placeholder: "any" });
  const user = h("input", { name: "user_id", value: filters.user_id, placeholder: "any" });
  const go = (extra) => { location.hash = `#/sessions${query({ agent_id: agent.value, user_id: user.value, ...extra })}`; };
  const rows = page.data.map((s) => h("tr", { dataset: { session: s.id } },
    h("td", { class: "id" }, h("a", { href: `#/sessions/${encodeURIComponent(s.id)}` }, s.id)),
    h("td", {}, s.agent_id), h("td", { class: "wide" }, s.user_id ?? "—"),
    h("td", {}, s.version), h("td", { class: "wide" }, s.turn_count), h("td", { class: "wide" }, when(s.updated_at))));
  show(h("h1", { tabindex: -1 }, "Sessions"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); go({}); } },
      h("label", {}, "Agent", agent), h("label", {}, "User", user),
      h("button", { type: "submit" }, "Filter")),
    page.data.length ? table(["Session", "Agent", "User", "Version", "Turns", "Updated"], rows, "sessions")
      : h("p", { class: "muted" }, "No sessions."),
    h("div", { class: "row" },
      after ? h("button", { onclick: () => go({}) }, "First page") : null,
      page.has_more ? h("button", { id: "next-page", onclick: () => go({ starting_after: page.last_id }) }, "Next page") : null));
}

async function session(id) {
  const path = `/v1/sessions/${encodeURIComponent(id)}`;
  // The latest versions and turns (states can be large): earlier versions on request.
  const PAGE = 50;
  const [s, history, latest] = await Promise.all([
    api("GET", path),
    api("GET", `${path}/history?limit=${PAGE}`),
    api("GET", `${path}/turns?limit=100&order=desc`),
  ]);
  let versions = [...history.data].sort((a, b) => a.version - b.version);
  const turns = [...latest.data].reverse();
  const byVersion = new Map(versions.map((v) => [v.version, v]));
  const picked = [];
  const compare = h("div", { id: "compare" });
  const renderCompare = () => {
    if (picked.length === 2) {
      const [a, b] = [...picked].sort((x, y) => x - y);
      compare.replaceChildren(h("h2", {}, `Version ${a} → version ${b}`),
        diffList(diff(byVersion.get(a).state, byVersion.get(b).state)));
    } else {
      compare.replaceChildren(h("p", { class: "muted" }, "Pick two versions to compare them."));
    }
  };
  // The last two picked are compared; picking a third unpicks the oldest pick.
  const pick = (version, box) => {
    if (box.checked) picked.push(version); else picked.splice(picked.indexOf(version), 1);
    while (picked.length > 2) {
      const dropped = picked.shift();
      main.querySelector(`input[data-version="${dropped}"]`).checked = false;
    }
    renderCompare();
  };
  renderCompare();
  const act = async (what, body, then) => {
    if (!confirm(`${what}?`)) return;
    try { then(await api("POST", `${path}/${body.path}`, body.body)); } catch (err) { say(err.message); }
  };
  const versionItem = (v) => {
    const before = byVersion.get(v.version - 1);
    const change = v.change?.kind === "rolled_back" ? `rolled back to ${v.change.restored_from_version}` : v.change?.kind;
    const box = h("input", { type: "checkbox", dataset: { version: v.version }, "aria-label": `Pick version ${v.version}`,
      onchange: (e) => pick(v.version, e.target) });
    return h("li", { class: "version", dataset: { version: v.version } },
      h("div", { class: "version-head" }, box,
        h("b", {}, `Version ${v.version}`), h("span", { class: "muted" }, change),
        h("span", { class: "muted" }, `by ${v.updated_by}`), h("span", { class: "muted" }, when(v.created_at)),
        v.version !== s.version ? h("button", { class: "rollback", onclick: () => act(`Roll back to version ${v.version}`,
          { path: "rollback", body: { version: v.version, reason: "from the dashboard" } }, () => route()) }, "Roll back here") : null,
        h("button", { class: "fork", onclick: () => act(`Fork a new session from version ${v.version}`,
          { path: "fork", body: { version: v.version } }, (f) => { location.hash = `#/sessions/${encodeURIComponent(f.id)}`; }) }, "Fork")),
      v.reasoning ? h("p", {}, "Why: ", v.reasoning) : null,
      before ? h("details", {}, h("summary", {}, `Changes from version ${before.version}`), diffList(diff(before.state, v.state))) : null);
  };
  const turnItem = (t) => h("li", { class: "turn" },
    h("div", { class: "version-head" }, h("b", {}, `Turn ${t.turn_number}`),
      t.state_version !== null ? h("span", { class: "muted" }, `wrote version ${t.state_version}`) : null,
      h("span", { class: "muted" }, when(t.created_at))),
    h("p", {}, "In: ", t.input_preview), h("p", {}, "Out: ", t.output_preview),
    t.reasoning ? h("p", { class: "muted" }, "Reasoning: ", t.reasoning) : null);
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const earlier = h("button", { id: "earlier-versions", onclick: async () => {
    const first = versions[0].version;
    const from = Math.max(0, first - PAGE);
    try {
      const more = await api("GET", `${path}/history?from_version=${from}&limit=${first - from}`);
      for (const v of more.data) byVersion.set(v.version, v);
      versions = [...byVersion.values()].sort((a, b) => a.version - b.version);
      renderTimeline();
    } catch (err) { say(err.message); }
  } }, "Earlier versions");
  // Turns go right after the version they wrote, others where their time falls.
  const renderTimeline = () => {
    const items = [];
    const first = versions[0];
    const pending = turns.filter((t) => t.created_at >= first.created_at || (t.state_version ?? -1) >= first.version);
    for (const v of versions) {
      while (pending.length && pending[0].state_version === null && pending[0].created_at < v.created_at) items.push(turnItem(pending.shift()));
      items.push(versionItem(v));
      while (pending.length && pending[0].state_version === v.version) items.push(turnItem(pending.shift()));
    }
    items.push(...pending.map(turnItem));
    timeline.replaceChildren(...items);
    earlier.hidden = versions[0].version === 0;
  };
  renderTimeline();
  show(h("h1", { tabindex: -1 }, `Session ${s.id}`),
    h("div", { class: "card" },
      h("p", {}, `Agent ${s.agent_id} · user ${s.user_id ?? "—"} · version ${s.version} · `,
        `${count(s.turn_count, "turn")} · ${count(s.memory_count, "memory", "memories")}`),
      h("p", { class: "muted" }, `Updated ${when(s.updated_at)} · expires ${when(s.ttl_expires_at)}`)),
    h("h2", {}, "Current state"), h("div", { class: "card", id: "state" }, tree(s.state)),
    h("h2", {}, "Compare"), compare,
    h("h2", {}, "Timeline"), earlier, timeline);
}

async function memories(params) {
  const fields = ["query", "session_id", "user_id", "type", "tags"];
  const values = Object.fromEntries(fields.map((f) => [f, params.get(f) ?? ""]));
  const inputs = Object.fromEntries(fields.map((f) => [f, h("input", { name: f, value: values[f], id: `memory-${f}` })]));
  const result = await api("GET", `/v1/memories${query({ ...values, limit: 50 })}`);
  const searched = Boolean(values.query);
  const revisions = h("div", { id: "revisions" });
  const showRevisions = async (m) => {
    const history = await api("GET", `/v1/memories/${encodeURIComponent(m.id)}/history`);
    revisions.replaceChildren(h("h2", {}, `Revisions of ${m.id}`),
      h("ol", {}, (history.data ?? history).map((r) => h("li", {}, `v${r.version} · ${when(r.updated_at)} · `, r.content))));
  };
  const score = (x) => (typeof x === "number" ? x.toFixed(3) : "—");
  const rows = result.data.map((m) => h("tr", {},
    h("td", {}, m.content), h("td", { class: "wide" }, m.type ?? m.memory_type), h("td", { class: "wide" }, (m.tags ?? []).join(", ")),
    searched ? [h("td", {}, score(m.score)), h("td", {}, score(m.vector_score)), h("td", {}, score(m.keyword_score))] : null,
    h("td", {}, h("button", { class: "revisions", onclick: () => showRevisions(m).catch((e) => say(e.message)) }, "Revisions"))));
  const headers = ["Content", "Type", "Tags", ...(searched ? ["Score", "Vector", "Keyword"] : []), ""];
  show(h("h1", { tabindex: -1 }, "Memories"),
    h("form", { class: "row", onsubmit: (e) => {
      e.preventDefault();
      location.hash = `#/memories${query(Object.fromEntries(fields.map((f) => [f, inputs[f].value])))}`;
    } },
    h("label", {}, "Search", inputs.query), h("label", {}, "Session", inputs.session_id),
    h("label", {}, "User", inputs.user_id), h("label", {}, "Type", inputs.type), h("label", {}, "Tags", inputs.tags),
    h("button", { type: "submit", class: "primary" }, "Search")),
    result.data.length ? table(headers, rows, "memories") : h("p", { class: "muted" }, "No memories."), revisions);
}

async function keys() {
  const list = await api("GET", "/v1/dashboard/keys");
  const created = h("div", { id: "created-key" });
  const name = h("input", { name: "name", id: "key-name", required: true });
  const rate = h("input", { name: "rate_limit", type: "number", min: 1, placeholder: "server default" });
  const revoke = async (k) => {
    if (!confirm(`Revoke the key ${k.name} (${k.key_prefix}…)?`)) return;
    const path = `/v1/dashboard/keys/${encodeURIComponent(k.id)}`;
    try {
      await api("DELETE", path);
    } catch (err) {
      if (err.code !== "confirmation_required") return say(err.message);
      if (!confirm("This is the key you are signed in with. Revoke it anyway?")) return;
      await api("DELETE", `${path}?confirm=true`).catch((e) => say(e.message));
    }
    route();
  };
  const rows = list.map((k) => h("tr", { dataset: { key: k.id } },
    h("td", {}, k.name), h("td", { class: "id" }, `${k.key_prefix}…`),
    h("td", {}, k.is_active ? "active" : "revoked"), h("td", { class: "wide" }, `${k.rate_limit}/min`),
    h("td", { class: "wide" }, when(k.created_at)),
    h("td", {}, k.is_active ? h("button", { class: "danger revoke", onclick: () => revoke(k) }, "Revoke") : null)));
  show(h("h1", { tabindex: -1 }, "API keys"),
    h("form", { class: "row", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const body = { name: name.value };
        if (rate.value) body.rate_limit = Number(rate.value);
        const k = await api("POST", "/v1/dashboard/keys", body);
        await keys();
        main.querySelector("#created-key").replaceChildren(h("p", { class: "secret" },
          "New key (shown only now; copy it): ", h("code", { id: "full-key" }, k.full_key)));
      } catch (err) { say(err.message); }
    } }, h("label", {}, "Name", name), h("label", {}, "Requests a minute", rate),
    h("button", { type: "submit", class: "primary" }, "Create key")),
    created, table(["Name", "Key", "Status", "Rate", "Created", ""], rows, "keys"));
}

async function webhooks() {
  const list = await api("GET", "/v1/webhooks");
  const url = h("input", { name: "url", type: "url", required: true, size: 40, id: "webhook-url" });
  const events = h("input", { name: "events", placeholder: "all" });
  const deliveries = h("div", { id: "deliveries" });
  const showDeliveries = async (e) => {
    const path = `/v1/webhooks/${encodeURIComponent(e.id)}/deliveries`;
    const found = await api("GET", path);
    const retry = async (d) => {
      try { await api("POST", `${path}/${encodeURIComponent(d.event_id)}/retry`); await showDeliveries(e); } catch (err) { say(err.message); }
    };
    deliveries.replaceChildren(h("h2", {}, `Deliveries to ${e.url}`),
      found.data.length ? table(["Event", "Type", "Status", "Attempts", "Last answer", ""],
        found.data.map((d) => h("tr", { class: "delivery" },
          h("td", { class: "id" }, d.event_id), h("td", {}, d.type), h("td", { class: "status" }, d.status),
          h("td", {}, d.attempts), h("td", {}, d.last_error ?? (d.last_status ? `HTTP ${d.last_status}` : "—")),
          h("td", {}, d.status !== "pending" ? h("button", { class: "retry", onclick: () => retry(d) }, "Retry") : null))), "delivery-list")
        : h("p", { class: "muted" }, "No deliveries yet."));
  };
  const remove = async (e) => {
    if (!confirm(`Delete the endpoint ${e.url}?`)) return;
    try { await api("DELETE", `/v1/webhooks/${encodeURIComponent(e.id)}`); route(); } catch (err) { say(err.message); }
  };
  const rows = list.data.map((e) => h("tr", { dataset: { webhook: e.id } },
    h("td", { class: "id" }, e.url), h("td", { class: "wide" }, e.events.length ? e.events.join(", ") : "all events"),
    h("td", { class: "wide" }, `${e.secret_prefix}`),
    h("td", {}, h("button", { class: "deliveries", onclick: () => showDeliveries(e).catch((x) => say(x.message)) }, "Deliveries"),
      " ", h("button", { class: "danger", onclick: () => remove(e) }, "Delete"))));
  show(h("h1", { tabindex: -1 }, "Webhooks"),
    h("form", { class: "row", onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { url: url.value, events: events.value ? events.value.split(",").map((x) => x.trim()) : [] };
      try {
        const e = await api("POST", "/v1/webhooks", body);
        await webhooks();
        main.querySelector("#deliveries").before(h("p", { class: "secret" }, "Signing secret (shown only now): ", h("code", {}, e.secret)));
      } catch (err) { say(err.message); }
    } }, h("label", {}, "URL", url), h("label", {}, "Events (comma-separated)", events),
    h("button", { type: "submit", class: "primary" }, "Add endpoint")),
    list.data.length ? table(["URL", "Events", "Secret", ""], rows, "webhooks") : h("p", { class: "muted" }, "No endpoints."),
    deliveries);
}

async function stats() {
  const { stats: t, recent_activity: hours } = await api("GET", "/v1/dashboard/stats");
  const stat = (label, n) => h("div", { class: "stat" }, h("b", {}, n ?? "—"), label);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 240 100");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Changes per hour, last 24 hours");
  const most = Math.max(1, ...hours.map((x) => x.count));
  const start = Date.now() - 24 * 3600e3;
  for (const x of hours) {
    const slot = Math.min(23, Math.max(0, Math.floor((new Date(x.timestamp) - start) / 3600e3)));
    const height = (x.count / most) * 96;
    const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    for (const [k, v] of Object.entries({ x: slot * 10 + 1, y: 100 - height, width: 8, height })) bar.setAttribute(k, v);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${when(x.timestamp)}: ${x.count}`;
    bar.append(title);
    svg.append(bar);
  }
  show(h("h1", { tabindex: -1 }, "Stats"),
    h("div", { class: "stats", id: "totals" }, stat("sessions", t.total_sessions), stat("turns", t.total_turns),
      stat("memories", t.total_memories), stat("entities", t.total_entities),
      stat("sessions changed in 24 h", t.active_sessions_24h)),
    h("h2", {}, "Changes per hour, last 24 hours"), svg,
    h("div", { class: "row muted axis" }, h("span", {}, "24 hours ago"), h("span", {}, "now")));
}

// ----- routing -----

async function route() {
  say("");
  if (!sessionStorage.getItem(KEY)) return signIn();
  nav.hidden = false;
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("current", a.getAttribute("href") === `#/${parts[0] ?? "sessions"}`);
  try {
    if (parts[0] === "sessions" && parts[1]) await session(parts[1]);
    else if (parts[0] === "memories") await memories(params);
    else if (parts[0] === "keys") await keys();
    else if (parts[0] === "webhooks") await webhooks();
    else if (parts[0] === "stats") await stats();
    else await sessions(params);
  } catch (err) {
    if (err.status === 401) { sessionStorage.removeItem(KEY); signIn(); } else {
      show(h("h1", { tabindex: -1 }, "This page did not load"), h("button", { onclick: route }, "Try again"));
    }
    say(err.message);
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "";
  route();
});
window.addEventListener("hashchange", route);
route();
