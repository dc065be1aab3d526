// The Generated keys tab: the account's own keys, their tokens and renewals.

import * as api from "./api.js";
import { confirmDialog, openDialog, revealSecret } from "./dialogs.js";
import {
  field, formatDate, h, orDash, radios, replaceChildren, roleChoices, rolesList,
  select, statusBadge, time, uid,
} from "./dom.js";
import { serverTable, STATUS_FILTER, tableToolbar } from "./table.js";

export function mayActOn(ctx, key) {
  return key.appKey === ctx.me.appKey || key.roles.every((role) => ctx.me.assignableRoles.includes(role));
}

// The marker says since when in words on the page (a tooltip alone is for mice: touch
// and keyboard users never see it), and in its title as well.
// Since when: the list API says it (renewalAlertSince), from the account's period, which
// a renew-only caller may not read.
function marker(key) {
  if (key.renewalAlert !== "orange" && key.renewalAlert !== "red") return null;
  const since = key.renewalAlertSince;
  const day = since ? formatDate(since, false) : "";
  const words = key.renewalAlert === "red" ? "Token renewal overdue" : "Token renewal due";
  const text = day ? `${words} since ${day}` : words;
  return h("span", { class: "alert-wrap", title: text, "data-alert": key.renewalAlert },
    h("span", { class: `marker-text ${key.renewalAlert}` },
      h("span", { class: "alert-level" },
        h("span", { class: `marker ${key.renewalAlert}`, "aria-hidden": "true" }),
        key.renewalAlert === "red" ? "Renew now" : "Renew soon"),
      day ? [h("span", { class: "alert-sep" }, " · "), h("span", { class: "alert-since" }, `since ${day}`)] : null));
}

// What each token of a pending renewal does now: both work while the key is active,
// and the key's status refuses both while it is not (401 key_inactive).
function pendingNote(key) {
  if (!key.creationDateNewToken) return null;
  const active = key.status === "active";
  const refused = "refused while the key is inactive";
  return h("span", { class: "pending" }, "Renewal pending:",
    h("ul", {},
      h("li", {}, `Old token: ${active ? "still works, until you delete it" : refused}`),
      h("li", {}, `New token: issued ${formatDate(key.creationDateNewToken)}, ${active ? "works" : refused}`)));
}

function showIssued(control, answer, what) {
  if (answer.appToken) {
    control.show(revealSecret({
      heading: `${what} for API key ${answer.appKey}.`,
      label: "API token",
      value: answer.appToken,
      warning: "Copy the token now and keep it in your secret manager: it will not be shown again.",
    }));
  } else {
    control.show(revealSecret({
      heading: `${what} for API key ${answer.appKey}, behind a one-time link.`,
      label: "One-time link",
      value: answer.tokenLink,
      warning: `The link reveals the token once, then stops working; it expires ${formatDate(answer.tokenLinkExpires)}. Send it only to whoever will use the key.`,
    }));
  }
  return true; // keep the dialog open on the token
}

// The role picker of an edit dialog. For another key it offers the roles the caller may
// assign (a key holding any other has no Edit button). For the signed-in key itself it
// offers the roles it holds too: the API lets a key drop its own roles, even one it may
// not give, and never give it back. Dropping one of them, or deactivating itself, is
// asked about first: the role may be what lets the key use this page at all.
const UNDERSTOOD = "I understand that I may lose access to this page";

export function ownRoles(ctx, key, legend, stopping = "deactivates the key you are signed in with, which ends this session") {
  const { me } = ctx;
  const mine = key.appKey === me.appKey;
  const offered = mine ? [...new Set([...me.assignableRoles, ...key.roles])].sort() : me.assignableRoles;
  const choices = roleChoices(legend, offered, key.roles);
  if (mine) {
    for (const input of choices.querySelectorAll('input[name="roles"]')) {
      if (me.assignableRoles.includes(input.value)) continue;
      input.nextElementSibling.append( // the role's name: the note reads on with it
        h("span", { class: "hint" }, " (yours: once removed, you may not give it back)"));
    }
  }
  const confirmation = h("div", { class: "self-warning", hidden: true });
  // what the warning on screen asks about ({dropped, stops}), and its tick box: a tick
  // approves that change alone, not whatever the form says by the time Save is pressed
  let shown = null;
  let acknowledged = null;
  let watching = false;
  const risk = (roles, status) => ({
    dropped: key.roles.filter((role) => !roles.includes(role)).sort().join("\n"),
    stops: status === "inactive",
  });
  const same = (a, b) => Boolean(a && b) && a.dropped === b.dropped && a.stops === b.stops;
  function reset(control) {
    confirmation.hidden = true;
    replaceChildren(confirmation);
    shown = null;
    acknowledged = null;
    control.submit.textContent = "Save";
  }
  // the form changed after the warning was shown: a warning that no longer says what
  // Save would do goes, with its tick and "Save anyway"; Save asks again if it must
  function watch(control) {
    if (watching) return;
    watching = true;
    const changed = (event) => {
      if (!shown || event.target === acknowledged) return;
      const form = new FormData(control.form);
      const status = String(form.get("status"));
      const now = risk(checkedRoles(form), status !== key.status ? status : undefined);
      if (!same(now, shown)) reset(control);
    };
    control.form.addEventListener("change", changed);
    control.form.addEventListener("input", changed);
  }
  function confirmed(control, roles, status) {
    if (!mine) return true;
    watch(control);
    const now = risk(roles, status);
    const dropped = key.roles.filter((role) => !roles.includes(role));
    if (!dropped.length && !now.stops) {
      reset(control);
      return true;
    }
    if (same(now, shown) && acknowledged && acknowledged.checked) return true;
    const what = [];
    if (dropped.length) {
      what.push(`removes ${dropped.length === 1 ? "the role" : "the roles"} ${dropped.join(", ")} from the key you are signed in with`);
    }
    if (now.stops) what.push(stopping);
    const box = h("input", { type: "checkbox", id: uid("self-ack"), name: "selfAck" });
    replaceChildren(confirmation,
      h("p", { class: "warning", role: "alert" }, h("strong", {}, `This ${what.join(" and ")}.`),
        " If what it loses is what lets it view or edit API keys, you lose access to this page and need another key to sign in."),
      h("label", { class: "choice", for: box.id }, box, h("span", {}, UNDERSTOOD)));
    confirmation.hidden = false;
    shown = now;
    acknowledged = box;
    control.submit.textContent = "Save anyway";
    box.focus();
    return false;
  }
  return { choices, confirmation, confirmed, mine };
}

export function sameRoles(a, b) {
  return a.length === b.length && [...a].sort().join("\n") === [...b].sort().join("\n");
}

export function checkedRoles(form) {
  return form.getAll("roles").map(String);
}

export function generatedTab(ctx, panel) {
  const { me, account } = ctx;
  const may = me.permissions;
  const query = { q: "", status: "", role: "", renewal: "", sort: "creationDate", order: "desc", page: 1, perPage: 20 };
  const keyPath = (appKey, ...rest) => api.accountPath(account, "keys", appKey, ...rest);

  const columns = [
    { title: "Key", sort: "appKey", cell: (key) => h("div", {}, marker(key), h("code", { class: "key" }, key.appKey)) },
    { title: "Label", sort: "label", cell: (key) => orDash(key.label) },
    { title: "Roles", cell: (key) => rolesList(key.roles) },
    { title: "Created", sort: "creationDate", firstOrder: "desc", cell: (key) => time(key.creationDate) },
    { title: "Token issued", sort: "creationDateToken", firstOrder: "desc", cell: (key) => time(key.creationDateToken) },
    { title: "Last used", sort: "lastUsed", firstOrder: "desc", cell: (key) => time(key.lastUsed) },
    { title: "Status", sort: "status", cell: (key) => [statusBadge(key.status), pendingNote(key)] },
    { title: "Actions", cell: (key) => actions(key) },
  ];
  const table = serverTable({
    caption: "Generated keys",
    columns,
    query,
    noun: ["key", "keys"],
    emptyText: "No key matches.",
    load: (q) => api.get(api.accountPath(account, "keys"), q),
  });

  function actions(key) {
    const buttons = [];
    const canAct = mayActOn(ctx, key);
    // each named with its key ("Edit kgk-acme-…"): a list of a page's buttons, as a
    // screen reader offers it, would otherwise be twenty "Edit" alike
    const button = (text, handler, cls) => {
      const b = h("button", { type: "button", class: cls, "aria-label": `${text} ${key.appKey}` }, text);
      b.addEventListener("click", () => handler(key));
      return b;
    };
    if (canAct && may.edit) buttons.push(button("Edit", edit));
    if (canAct && may.renewToken) {
      if (key.creationDateNewToken) {
        buttons.push(button("Delete old token", finishRenewal), button("Undo", undoRenewal));
      } else {
        buttons.push(button("Renew token", renew));
      }
    }
    if (canAct && may.edit) {
      buttons.push(key.status === "active" ? button("Deactivate", deactivate) : button("Activate", activate));
      buttons.push(button("Delete", removeKey));
    }
    if (!buttons.length) {
      // the reason in words, not in a tooltip that only a mouse can show
      return h("span", { class: "hint" }, canAct ? "—" : "None: it holds roles you may not give");
    }
    return h("div", { class: "row-actions" }, buttons);
  }

  function generate() {
    const label = h("input", { name: "label", required: true, maxlength: "200", autocomplete: "off" });
    openDialog({
      title: "Generate key",
      submitLabel: "Generate",
      body: [
        field("Label", label),
        roleChoices("Roles", me.assignableRoles, []),
        radios("Token delivery", "delivery", [
          ["token", "Show the token now"],
          ["link", "Make a one-time link", "(for someone else: it reveals the token once)"],
        ], "token"),
      ],
      async onSubmit(form, control) {
        const answer = await api.post(api.accountPath(account, "keys"), {
          label: String(form.get("label")), roles: checkedRoles(form), delivery: String(form.get("delivery")),
        });
        table.refresh();
        return showIssued(control, answer, "A token was made");
      },
    });
  }

  function edit(key) {
    const label = h("input", { name: "label", required: true, maxlength: "200", value: key.label, autocomplete: "off" });
    const self = ownRoles(ctx, key, "Roles");
    openDialog({
      title: `Edit ${key.appKey}`,
      submitLabel: "Save",
      body: [
        field("Label", label),
        self.choices,
        field("Status", select("status", [["active", "Active"], ["inactive", "Inactive (integrations stop)"]], key.status)),
        self.confirmation,
      ],
      async onSubmit(form, control) {
        const change = {};
        const newLabel = String(form.get("label"));
        const roles = checkedRoles(form);
        if (newLabel !== key.label) change.label = newLabel;
        if (!sameRoles(roles, key.roles)) change.roles = roles;
        if (form.get("status") !== key.status) change.status = String(form.get("status"));
        if (!self.confirmed(control, roles, change.status)) return true;
        if (Object.keys(change).length) await api.patch(keyPath(key.appKey), change);
        if (self.mine && (change.roles || change.status)) {
          // what the signed-in key may do here has changed: read it again once the
          // dialog is gone, rather than leave buttons the API will now refuse
          control.dialog.addEventListener("close", () => ctx.recheck());
        } else {
          table.refresh();
        }
      },
    });
  }

  function renew(key) {
    openDialog({
      title: `Renew the token of ${key.appKey}`,
      submitLabel: "Renew token",
      body: [
        radios("When should the old token stop working?", "deleteOld", [
          ["later", "Later", "(recommended: both tokens work until you delete the old one, so integrations move over without downtime)"],
          ["now", "Now", "(the old token stops at once; integrations still using it fail)"],
        ], "later"),
        radios("Token delivery", "delivery", [
          ["token", "Show the new token now"],
          ["link", "Make a one-time link"],
        ], "token"),
      ],
      async onSubmit(form, control) {
        const answer = await api.post(keyPath(key.appKey, "token", "renew"), {
          deleteOld: String(form.get("deleteOld")), delivery: String(form.get("delivery")),
        });
        // the table is read again once the token has been seen: renewing the signed-in
        // key's own token now ends this session, and going back to sign-in closes every
        // dialog, the only copy of the new token with it
        control.dialog.addEventListener("close", () => table.refresh());
        return showIssued(control, answer, "A new token was made");
      },
    });
  }

  function finishRenewal(key) {
    confirmDialog({
      title: `Delete the old token of ${key.appKey}?`,
      message: "The old token stops working now; only the new one works from then on. Integrations still using the old token will stop working.",
      confirmLabel: "Delete old token",
      async onConfirm() {
        await api.post(keyPath(key.appKey, "token", "finish-renewal"));
        table.refresh();
      },
    });
  }

  function undoRenewal(key) {
    confirmDialog({
      title: `Undo the token renewal of ${key.appKey}?`,
      message: "The new token stops working now; the old token keeps working as before.",
      confirmLabel: "Undo renewal",
      async onConfirm() {
        await api.post(keyPath(key.appKey, "token", "undo-renewal"));
        table.refresh();
      },
    });
  }

  // Deactivating or deleting the signed-in key itself ends this session: said first,
  // and ticked, as the Edit dialog asks it
  function ownWarning(key, what) {
    if (key.appKey !== me.appKey) return null;
    return [h("strong", {}, `This ${what} the key you are signed in with, which ends this session.`),
      " You need another key to sign in to this page again."];
  }

  function deactivate(key) {
    const mine = key.appKey === me.appKey;
    confirmDialog({
      title: `Deactivate ${key.appKey}?`,
      message: "Integrations that use this key will stop working: every request with it is refused until the key is activated again.",
      warning: ownWarning(key, "deactivates"),
      acknowledge: mine ? UNDERSTOOD : undefined,
      confirmLabel: "Deactivate key",
      async onConfirm() {
        await api.patch(keyPath(key.appKey), { status: "inactive" });
        table.refresh(); // for the signed-in key: refused (key_inactive), back to sign-in
      },
    });
  }

  async function activate(key) {
    try {
      await api.patch(keyPath(key.appKey), { status: "active" });
      table.refresh();
    } catch (failure) {
      table.fail(failure);
    }
  }

  function removeKey(key) {
    confirmDialog({
      title: `Delete ${key.appKey}?`,
      message: "The key and its tokens are deleted, and integrations that use it stop working. Its name is never issued again.",
      confirmLabel: "Delete key",
      warning: ownWarning(key, "deletes"),
      acknowledge: key.appKey === me.appKey
        ? ["I understand that this action cannot be undone", UNDERSTOOD]
        : "I understand that this action cannot be undone",
      async onConfirm() {
        await api.remove(keyPath(key.appKey));
        table.refresh();
      },
    });
  }

  // the toolbar: search and filters, all answered by the server
  const toolbar = tableToolbar({ label: "Find generated keys", query, table, filters: [
    ["status", "Status", STATUS_FILTER],
    ["role", "Role", [["", "All"], ...me.definedRoles.map((r) => [r, r])]],
    ["renewal", "Renewal alert", [["", "All"], ["none", "None"], ["orange", "Orange (renew soon)"], ["red", "Red (overdue)"]]],
  ] });
  if (may.edit) {
    const button = h("button", { type: "button", class: "primary" }, "Generate key");
    button.addEventListener("click", generate);
    toolbar.append(h("div", { class: "actions" }, button));
  }
  const intro = may.view ? null : h("p", { class: "hint" }, "You see the keys whose token you may renew.");
  replaceChildren(panel, h("h2", { class: "visually-hidden" }, "Generated keys"), intro, toolbar, table.nodes);
  return { refresh: table.refresh };
}
