// Modal dialogs on the native <dialog> element: it makes the page behind inert and
// closes on Escape, and the page returns focus to the button that opened it. Tab and
// Shift+Tab go round the dialog's controls (Chromium's <dialog> would let the focus
// leave for the browser's own controls, then the page's <body>). A closed dialog is
// removed from the document, and with it any token it showed.

import { clearError, focusLater, h, replaceChildren, showError, uid } from "./dom.js";

// The controls Tab stops at, in order: enabled, shown, not taken out of the order, and
// of each group of radio buttons only the one Tab reaches (the checked one, else the
// first).
export function tabStops(root) {
  const candidates = root.querySelectorAll(
    "button, input, select, textarea, a[href], [tabindex]");
  const stops = [];
  for (const element of candidates) {
    if (element.disabled || element.tabIndex < 0 || element.type === "hidden") continue;
    if (element.closest("[hidden], [inert]") || element.getClientRects().length === 0) continue;
    if (element.type === "radio" && element.name) {
      const group = [...root.querySelectorAll("input[type=radio]")].filter(
        (r) => r.name === element.name && r.form === element.form && !r.disabled);
      const reached = group.find((r) => r.checked) || group[0];
      if (reached !== element) continue;
    }
    stops.push(element);
  }
  return stops;
}

function trapFocus(dialog, event) {
  if (event.key !== "Tab" || event.altKey || event.ctrlKey || event.metaKey) return;
  const stops = tabStops(dialog);
  if (!stops.length) {
    event.preventDefault();
    return;
  }
  const first = stops[0];
  const last = stops[stops.length - 1];
  const at = document.activeElement;
  const inside = dialog.contains(at) && at !== dialog;
  if (event.shiftKey && (at === first || !inside)) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && (at === last || !inside)) {
    event.preventDefault();
    first.focus();
  }
}

// the focus outside every dialog while one is open (a click on its padding, or where
// Chromium let it go): Tab brings it back into the dialog on top
document.addEventListener("keydown", (event) => {
  const open = [...document.querySelectorAll("dialog[open]")];
  const top = open[open.length - 1];
  if (top && !top.contains(event.target)) trapFocus(top, event);
});

export function openDialog({ title, body, submitLabel, danger = false, onSubmit, cancelLabel = "Cancel" }) {
  const opener = focusLater(document.activeElement);
  const titleId = uid("dialog-title");
  const error = h("p", { class: "error", role: "alert" });
  const submit = h("button", { type: "submit", class: danger ? "danger" : "primary" }, submitLabel);
  const cancel = h("button", { type: "button" }, cancelLabel);
  const content = h("div", { class: "dialog-body" }, body);
  const actions = h("div", { class: "dialog-actions" }, cancel, submit);
  const form = h("form", { method: "dialog" }, h("h2", { id: titleId }, title), content, error, actions);
  const dialog = h("dialog", { "aria-labelledby": titleId }, form);
  let busy = false;

  const control = {
    dialog,
    form,
    submit,
    error,
    close() {
      if (dialog.open) dialog.close();
      dialog.remove(); // at once: a token shown in it leaves the document now
    },
    // Replaces the dialog's content (e.g. with a token shown once) and leaves one button.
    show(nodes, doneLabel = "Done") {
      replaceChildren(content, nodes);
      const done = h("button", { type: "button", class: "primary" }, doneLabel);
      done.addEventListener("click", () => control.close());
      replaceChildren(actions, done);
      clearError(error);
      const first = content.querySelector("button, input") || done;
      first.focus();
    },
  };

  // while the request runs the dialog stays: closed then, what comes back (a token shown
  // once) would have nowhere to go
  cancel.addEventListener("click", () => { if (!busy) control.close(); });
  dialog.addEventListener("cancel", (event) => { if (busy) event.preventDefault(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    busy = true;
    submit.disabled = true;
    clearError(error);
    try {
      const keepOpen = await onSubmit(new FormData(form), control);
      if (!keepOpen) control.close();
    } catch (failure) {
      showError(error, failure);
    } finally {
      busy = false;
      submit.disabled = false;
      // a disabled button loses the focus: give it back while the dialog stays open
      if (dialog.open && !dialog.contains(document.activeElement)) submit.focus();
    }
  });
  dialog.addEventListener("keydown", (event) => trapFocus(dialog, event));
  dialog.addEventListener("close", () => {
    dialog.remove();
    const back = opener();
    if (back && typeof back.focus === "function") back.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  return control;
}

export function closeAllDialogs() {
  for (const dialog of document.querySelectorAll("dialog")) {
    if (dialog.open) dialog.close();
    dialog.remove();
  }
}

// A confirmation: what will happen, in words, and a button that says it. `warning`
// (optional) is said first, as an alert; `acknowledge` is the words of a tick box, or a
// list of them: the button waits until every box is ticked.
export function confirmDialog({ title, message, confirmLabel, danger = true, acknowledge, warning, onConfirm }) {
  const body = [h("p", {}, message)];
  if (warning) body.unshift(h("p", { class: "warning", role: "alert" }, warning));
  const boxes = [];
  for (const words of [acknowledge || []].flat()) {
    const box = h("input", { type: "checkbox", id: uid("ack"), name: "acknowledge", required: true });
    body.push(h("label", { class: "choice", for: box.id }, box, h("span", {}, words)));
    boxes.push(box);
  }
  const control = openDialog({ title, body, submitLabel: confirmLabel, danger, onSubmit: onConfirm });
  if (boxes.length) {
    const ticked = () => { control.submit.disabled = !boxes.every((box) => box.checked); };
    ticked();
    for (const box of boxes) box.addEventListener("change", ticked);
  }
  return control;
}

// A secret shown once: read-only field, copy button, and the warning.
export function revealSecret({ heading, label, value, warning, extra }) {
  // the field gets the focus: what was made and the warning are read with it
  const headingId = uid("secret-heading");
  const warningId = uid("secret-warning");
  const input = h("input", { type: "text", readonly: true, id: uid("secret"), value, spellcheck: "false",
    autocomplete: "off", class: "secret-value", "aria-describedby": `${headingId} ${warningId}` });
  const copied = h("span", { class: "status", role: "status" });
  const copy = h("button", { type: "button" }, "Copy");
  copy.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      copied.textContent = "Copied.";
    } catch {
      copied.textContent = "Select the text and copy it (Ctrl+C / ⌘C).";
    }
  });
  return [
    h("p", { id: headingId }, heading),
    h("label", { for: input.id }, label),
    h("div", { class: "secret" }, input, copy),
    copied,
    h("p", { class: "warning", role: "note", id: warningId }, h("strong", {}, warning)),
    extra || null,
  ];
}
