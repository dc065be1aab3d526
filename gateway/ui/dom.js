// Building the page safely: every value from the API becomes text (textContent), never
// markup, so a label such as "<img onerror=…>" is shown as typed.

export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

export function replaceChildren(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

let counter = 0;
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

// Where focus goes back to when `element` may have been redrawn meanwhile (a table's
// rows are rebuilt after every change): the element while it is in the page, else the
// button of the same name in the same row, else the one at its place, else the table.
export function focusLater(element) {
  const row = element && element.closest ? element.closest("tr[data-key]") : null;
  const wrap = row ? row.closest(".table-wrap") : null;
  const place = row ? [...row.querySelectorAll("button")].indexOf(element) : -1;
  return () => {
    if (element && element.isConnected) return element;
    if (!wrap || !wrap.isConnected) return null;
    const again = [...wrap.querySelectorAll("tr[data-key]")].find((tr) => tr.dataset.key === row.dataset.key);
    const buttons = again ? [...again.querySelectorAll("button")] : [];
    return buttons.find((b) => b.textContent === element.textContent) || buttons[place] || buttons[0] || wrap;
  };
}

// A labelled control: <div class="field"><label for=id>text</label>control</div>
export function field(text, control, extraClass) {
  if (!control.id) control.id = uid("field");
  return h("div", { class: extraClass ? `field ${extraClass}` : "field" },
    h("label", { for: control.id }, text), control);
}

export function select(name, options, current) {
  const element = h("select", { name });
  for (const [value, text] of options) {
    const option = h("option", { value }, text);
    if (value === current) option.selected = true;
    element.append(option);
  }
  return element;
}

// Checkboxes for roles, in a fieldset whose legend names them.
export function roleChoices(legend, roles, checked, name = "roles") {
  const box = h("fieldset", {}, h("legend", {}, legend));
  if (roles.length === 0) {
    box.append(h("p", { class: "hint" }, "You may not give any role in this account."));
  }
  for (const role of roles) {
    const input = h("input", { type: "checkbox", name, value: role, id: uid("role") });
    input.checked = checked.includes(role);
    box.append(h("label", { class: "choice", for: input.id }, input, h("span", {}, role)));
  }
  return box;
}

export function radios(legend, name, options, current) {
  const box = h("fieldset", {}, h("legend", {}, legend));
  for (const [value, text, hint] of options) {
    const input = h("input", { type: "radio", name, value, id: uid(name) });
    input.checked = value === current;
    box.append(h("label", { class: "choice", for: input.id }, input,
      h("span", {}, text, hint ? h("span", { class: "hint" }, ` ${hint}`) : null)));
  }
  return box;
}

export function rolesList(roles) {
  if (!roles.length) return h("span", { class: "hint" }, "no roles");
  return h("ul", { class: "roles" }, roles.map((role) => h("li", {}, role)));
}

// A cell's text, or "—" (as a hint) when there is none, as other empty cells show.
export function orDash(value) {
  return value === undefined || value === null || value === "" ? h("span", { class: "hint" }, "—") : value;
}

export function statusBadge(status) {
  return h("span", { class: `badge ${status === "active" ? "active" : "inactive"}` },
    status === "active" ? "Active" : "Inactive");
}

const DATE_TIME = { dateStyle: "medium", timeStyle: "short" };
const DATE = { dateStyle: "medium" };

export function formatDate(iso, withTime = true) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, withTime ? DATE_TIME : DATE);
}

export function time(iso, empty = "never") {
  if (!iso) return h("span", { class: "hint" }, empty);
  return h("time", { datetime: iso, title: iso }, formatDate(iso));
}


export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// The API's message in place, with the code and request id for whoever reads the logs.
export function showError(target, error) {
  if (!target) return;
  const parts = [error.message || String(error)];
  if (error.requestId) parts.push(`(request ${error.requestId})`);
  target.textContent = parts.join(" ");
}

// A button disabled while its request ran lost the focus (to the page's start): once
// enabled again it takes it back, unless the focus went somewhere meanwhile.
export function enable(button) {
  button.disabled = false;
  if (!document.activeElement || document.activeElement === document.body) button.focus();
}

export function clearError(target) {
  if (target) target.textContent = "";
}
