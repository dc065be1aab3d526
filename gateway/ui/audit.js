// The Audit view: the account's recent events, newest first, filtered and paged by the
// API (a cursor per page: "Older" follows it, "Newer" goes back).

import * as api from "./api.js";
import { clearError, field, formatDate, h, replaceChildren, select, showError, time } from "./dom.js";

const ACTIONS = [
  "key.create", "key.update", "key.delete", "token.renew", "token.renew-now",
  "token.finish-renewal", "token.undo-renewal", "token.link-opened",
  "external-key.add", "external-key.update", "external-key.remove", "settings.update",
  "access.denied",
];

function show(value, name) {
  if (value === undefined) return "—";
  // times are stored as milliseconds since the epoch
  if (typeof value === "number" && value > 1e11 && /date|time/i.test(name)) {
    return formatDate(new Date(value).toISOString());
  }
  if (Array.isArray(value)) return value.length ? value.join(", ") : "(none)";
  if (value !== null && typeof value === "object") return JSON.stringify(value);
  return value === null ? "(none)" : String(value);
}

function changes(event) {
  const before = event.before || {};
  const after = event.after || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  if (!names.length) return h("span", { class: "hint" }, "—");
  return h("ul", { class: "changes" }, names.map((name) => {
    if (!(name in before)) return h("li", {}, `${name}: ${show(after[name], name)}`);
    if (!(name in after)) return h("li", {}, `${name}: ${show(before[name], name)} (removed)`);
    return h("li", {}, `${name}: ${show(before[name], name)} → ${show(after[name], name)}`);
  }));
}

export function auditTab(ctx, panel) {
  const { account } = ctx;
  const filters = { action: "", actor: "", target: "", limit: 20 };
  let cursors = [null]; // cursors[i]: the cursor of page i (null: the newest)
  let next = null;
  const error = h("p", { class: "error", role: "alert" });
  const body = h("tbody");
  const summary = h("span", { class: "summary", role: "status" });
  const newer = h("button", { type: "button" }, "Newer");
  const older = h("button", { type: "button" }, "Older");

  const action = select("action", [["", "All"], ...ACTIONS.map((a) => [a, a])], "");
  const actor = h("input", { name: "actor", maxlength: "200", spellcheck: "false", autocomplete: "off" });
  const target = h("input", { name: "target", maxlength: "200", spellcheck: "false", autocomplete: "off" });
  const limit = select("limit", [["20", "20"], ["50", "50"], ["100", "100"]], "20");
  const toolbar = h("form", { class: "toolbar", role: "search", "aria-label": "Filter audit events" },
    field("Action", action),
    field("Actor key", actor, "grow"),
    field("Target", target, "grow"),
    field("Per page", limit),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Apply filters")));
  toolbar.addEventListener("submit", (e) => {
    e.preventDefault();
    filters.action = action.value;
    filters.actor = actor.value.trim();
    filters.target = target.value.trim();
    filters.limit = Number(limit.value);
    cursors = [null];
    refresh();
  });
  newer.addEventListener("click", () => { cursors.pop(); refresh(); });
  older.addEventListener("click", () => { if (next) { cursors.push(next); refresh(); } });

  const table = h("table", { class: "cards" },
    h("caption", { class: "visually-hidden" }, "Audit events"),
    h("thead", {}, h("tr", {}, ["Time", "Action", "Actor", "Target", "Changes"].map((t) => h("th", { scope: "col" }, t)))),
    body);
  const wrap = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Audit events" }, table);
  replaceChildren(panel, h("h2", {}, "Audit"),
    toolbar, error, wrap,
    h("nav", { class: "pager", "aria-label": "Pages of audit events" }, newer, summary, older));

  let generation = 0;
  async function refresh() {
    generation += 1;
    const mine = generation;
    clearError(error);
    let page;
    try {
      page = await api.get(api.accountPath(account, "audit"), { ...filters, cursor: cursors[cursors.length - 1] });
    } catch (failure) {
      if (mine === generation) outOfDate(failure);
      return;
    }
    if (mine !== generation) return;
    const retried = body.contains(document.activeElement);
    next = page.next;
    if (!page.items.length) {
      replaceChildren(body, h("tr", {}, h("td", { class: "empty", colspan: 5 }, "No event matches.")));
    } else {
      replaceChildren(body, page.items.map((event) => h("tr", {},
        h("td", { "data-label": "Time" }, time(event.time)),
        h("td", { "data-label": "Action" }, h("code", {}, event.action)),
        h("td", { "data-label": "Actor" }, h("code", { class: "key" }, event.actor)),
        h("td", { "data-label": "Target" }, h("code", { class: "key" }, event.target)),
        h("td", { "data-label": "Changes" }, changes(event)))));
    }
    summary.textContent = `Page ${cursors.length} · ${page.items.length} ${page.items.length === 1 ? "event" : "events"}`;
    const had = document.activeElement;
    newer.disabled = cursors.length <= 1;
    older.disabled = !next;
    // the oldest (or newest) page reached: the focus goes to the other button rather
    // than out of the page with the one just disabled
    if (had.disabled && (had === newer || had === older)) (had === older ? newer : older).focus();
    if (retried) wrap.focus();
  }

  // the events could not be read: none of the old ones is left to look current
  function outOfDate(failure) {
    showError(error, failure);
    const had = document.activeElement;
    const lost = body.contains(had) || had === newer || had === older;
    const again = h("button", { type: "button" }, "Try again");
    again.addEventListener("click", () => refresh());
    replaceChildren(body, h("tr", { class: "stale" }, h("td", { class: "empty", colspan: 5 },
      h("p", {}, "The events could not be loaded, so none is shown."), again)));
    summary.textContent = "The events could not be loaded.";
    newer.disabled = older.disabled = true;
    if (lost) again.focus();
  }
  return { refresh };
}
