// A server-side table: the list API does the filtering, sorting and paging (query
// parameters q, status, role, sort, order, page, perPage), so a page of 20 rows costs the
// same at 50 keys and at 100,000.

import { clearError, debounce, field, focusLater, h, replaceChildren, select, showError, uid } from "./dom.js";

export const PER_PAGE = [["10", "10"], ["20", "20"], ["50", "50"], ["100", "100"]];

export const STATUS_FILTER = [["", "All"], ["active", "Active"], ["inactive", "Inactive"]];

// The search box, the filters ([name, label, options]) and the page size above a
// serverTable: each change sets its query parameter and goes back to page 1.
export function tableToolbar({ label, query, table, filters }) {
  const reload = () => { query.page = 1; table.refresh(); };
  const search = h("input", { type: "search", name: "q", maxlength: "200", autocomplete: "off" });
  search.addEventListener("input", debounce(() => { query.q = search.value.trim(); reload(); }, 250));
  const filter = ([name, text, options]) => {
    const control = select(name, options, "");
    control.addEventListener("change", () => { query[name] = control.value; reload(); });
    return field(text, control);
  };
  const perPage = select("perPage", PER_PAGE, "20");
  perPage.addEventListener("change", () => { query.perPage = Number(perPage.value); reload(); });
  return h("form", { class: "toolbar", role: "search", "aria-label": label, onsubmit: (e) => e.preventDefault() },
    field("Search label or key", search, "grow"),
    ...filters.map(filter),
    field("Per page", perPage));
}

// columns: [{title, sort?: field, cell(item) -> node}]
export function serverTable({ caption, columns, emptyText, load, query, noun }) {
  const error = h("p", { class: "error", role: "alert" });
  const body = h("tbody");
  const headers = columns.map((column) => {
    const th = h("th", { scope: "col" });
    if (column.sort) {
      const button = h("button", { type: "button", class: "sort" }, column.title);
      button.addEventListener("click", () => {
        if (query.sort === column.sort) query.order = query.order === "asc" ? "desc" : "asc";
        else { query.sort = column.sort; query.order = column.firstOrder || "asc"; }
        query.page = 1;
        refresh();
      });
      th.append(button);
      th.dataset.sort = column.sort;
    } else {
      th.append(column.title);
    }
    return th;
  });
  const table = h("table", { class: "cards" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, headers)),
    body);
  const wrap = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption }, table);
  // The pager: first, previous, a page number to go to ("Page [N] of M"), next, last;
  // the API takes any page number, so page 5,000 of 100,000 keys is one request away.
  const summary = h("span", { class: "summary visually-hidden", role: "status" });
  const count = h("span", { class: "count" });
  const first = h("button", { type: "button" }, "First page");
  const previous = h("button", { type: "button" }, "Previous page");
  const next = h("button", { type: "button" }, "Next page");
  const last = h("button", { type: "button" }, "Last page");
  const ofPages = h("span", { class: "of-pages", id: uid("of-pages") });
  const number = h("input", { type: "number", name: "page", id: uid("page"), min: "1", step: "1",
    required: true, inputmode: "numeric", autocomplete: "off", class: "page-number",
    "aria-describedby": ofPages.id });
  const go = h("button", { type: "submit" }, "Go");
  const jump = h("form", { class: "page-jump", "aria-label": `Go to a page of ${caption.toLowerCase()}` },
    h("label", { for: number.id }, "Page"), number, ofPages, go);
  let pages = 1;
  const goTo = (wanted) => { query.page = Math.min(Math.max(1, wanted), pages); refresh(); };
  first.addEventListener("click", () => goTo(1));
  previous.addEventListener("click", () => goTo(query.page - 1));
  next.addEventListener("click", () => goTo(query.page + 1));
  last.addEventListener("click", () => goTo(pages));
  jump.addEventListener("submit", (event) => {
    event.preventDefault(); // the browser has checked it: a whole number from 1 to the last
    goTo(Number(number.value));
  });
  const pager = h("nav", { class: "pager", "aria-label": `Pages of ${caption.toLowerCase()}` },
    h("div", { class: "pager-buttons" }, first, previous), jump,
    h("div", { class: "pager-buttons" }, next, last), count, summary);
  let generation = 0;

  function markSort() {
    for (const th of headers) {
      if (!th.dataset.sort) continue;
      if (th.dataset.sort === query.sort) {
        th.setAttribute("aria-sort", query.order === "asc" ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
  }

  async function refresh() {
    generation += 1;
    const mine = generation;
    markSort();
    clearError(error);
    let page;
    try {
      page = await load(query);
    } catch (failure) {
      if (mine === generation) outOfDate(failure);
      return;
    }
    if (mine !== generation) return; // a later request (a faster typist) wins
    for (const control of [number, go]) control.disabled = false;
    pages = Math.max(1, Math.ceil(page.total / page.perPage));
    if (page.items.length === 0 && query.page > 1 && page.total > 0) {
      query.page = pages;
      refresh();
      return;
    }
    // a row's button that had the focus is drawn anew: the focus follows it
    const focused = body.contains(document.activeElement) ? focusLater(document.activeElement) : null;
    if (page.items.length === 0) {
      replaceChildren(body, h("tr", {}, h("td", { class: "empty", colspan: columns.length }, emptyText)));
    } else {
      replaceChildren(body, page.items.map((item) => h("tr", { "data-key": item.appKey },
        columns.map((column) => h("td", { "data-label": column.title }, h("div", {}, column.cell(item)))))));
    }
    // (the button that read the list again is gone with its row: the table has it)
    if (focused) (focused() || wrap).focus();
    const total = `${page.total} ${page.total === 1 ? noun[0] : noun[1]}`;
    summary.textContent = `Page ${page.page} of ${pages} · ${total}`;
    count.textContent = total;
    ofPages.textContent = `of ${pages}`;
    number.max = String(pages);
    number.value = String(page.page);
    const had = document.activeElement;
    first.disabled = previous.disabled = page.page <= 1;
    next.disabled = last.disabled = page.page >= pages;
    // the last (or first) page reached: the pressed button is disabled and would drop
    // the focus out of the page; it goes to the button that leads back
    if (had.disabled && [first, previous, next, last].includes(had)) {
      const back = had === next || had === last ? previous : next;
      (back.disabled ? wrap : back).focus();
    }
  }

  // The list could not be read (any refusal, the network): the rows shown are no longer
  // known to be right, and their buttons would act on what may have changed or gone.
  // They are taken away, the API's message shown above, and a row says so, with a way
  // to read the list again; the pager waits for a list to page through.
  function outOfDate(failure) {
    showError(error, failure);
    const had = document.activeElement;
    const lost = body.contains(had) || [first, previous, next, last, number, go].includes(had);
    const again = h("button", { type: "button" }, "Try again");
    again.addEventListener("click", () => refresh());
    replaceChildren(body, h("tr", { class: "stale" }, h("td", { class: "empty", colspan: columns.length },
      h("p", {}, `The ${noun[1]} could not be loaded, so none is shown.`), again)));
    summary.textContent = `The ${noun[1]} could not be loaded.`;
    count.textContent = "";
    ofPages.textContent = "";
    for (const control of [first, previous, next, last, number, go]) control.disabled = true;
    if (lost) again.focus();
  }

  // an action's refusal outside a dialog (Activate) is shown above the table
  const fail = (failure) => showError(error, failure);
  return { nodes: [error, wrap, pager], refresh, fail };
}
