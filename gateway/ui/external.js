// The External keys tab: roles this account grants to keys that other accounts own.

import * as api from "./api.js";
import { confirmDialog, openDialog } from "./dialogs.js";
import { field, h, orDash, replaceChildren, roleChoices, rolesList, select, statusBadge, time } from "./dom.js";
import { checkedRoles, mayActOn, ownRoles, sameRoles } from "./keys.js";
import { serverTable, STATUS_FILTER, tableToolbar } from "./table.js";

export function externalTab(ctx, panel) {
  const { me, account } = ctx;
  const may = me.permissions;
  const query = { q: "", status: "", role: "", sort: "addedDate", order: "desc", page: 1, perPage: 20 };
  const grantPath = (appKey) => api.accountPath(account, "external-keys", appKey);

  const columns = [
    { title: "Key", sort: "appKey", cell: (x) => h("code", { class: "key" }, x.appKey) },
    { title: "Owner account", sort: "account", cell: (x) => orDash(x.account) },
    { title: "Label", sort: "label", cell: (x) => orDash(x.label) },
    { title: "Roles", cell: (x) => rolesList(x.roles) },
    { title: "Added on", sort: "addedDate", firstOrder: "desc", cell: (x) => time(x.addedDate) },
    { title: "Status", sort: "status", cell: (x) => statusBadge(x.status) },
    { title: "Actions", cell: (x) => actions(x) },
  ];
  const table = serverTable({
    caption: "External keys",
    columns,
    query,
    noun: ["external key", "external keys"],
    emptyText: "No external key matches.",
    load: (q) => api.get(api.accountPath(account, "external-keys"), q),
  });

  function actions(grant) {
    if (!may.edit) return h("span", { class: "hint" }, "—");
    if (!mayActOn(ctx, grant)) {
      return h("span", { class: "hint" }, "None: it holds roles you may not give");
    }
    // named with the key ("Edit kgk-beta-…"), as the Generated tab's are
    const edit = h("button", { type: "button", "aria-label": `Edit ${grant.appKey}` }, "Edit");
    edit.addEventListener("click", () => editGrant(grant));
    const removeButton = h("button", { type: "button", "aria-label": `Remove ${grant.appKey}` }, "Remove");
    removeButton.addEventListener("click", () => removeGrant(grant));
    return h("div", { class: "row-actions" }, edit, removeButton);
  }

  function add() {
    const key = h("input", { name: "appKey", required: true, maxlength: "200", spellcheck: "false", autocomplete: "off" });
    const label = h("input", { name: "label", maxlength: "200", autocomplete: "off" });
    openDialog({
      title: "Add external key",
      submitLabel: "Add",
      body: [
        h("p", { class: "hint" }, "A key that another account owns and manages; this account grants it roles here."),
        field("API key", key),
        field("Label (optional)", label),
        roleChoices("Roles in this account", me.assignableRoles, []),
      ],
      async onSubmit(form) {
        const body = { appKey: String(form.get("appKey")).trim(), roles: checkedRoles(form) };
        const text = String(form.get("label")).trim();
        if (text) body.label = text;
        await api.post(api.accountPath(account, "external-keys"), body);
        table.refresh();
      },
    });
  }

  function editGrant(grant) {
    // a label, once given, can be changed but not taken away (the API needs one)
    const label = h("input", { name: "label", maxlength: "200", value: grant.label, autocomplete: "off",
      required: Boolean(grant.label) });
    // the signed-in key's own grant here: dropping its roles is asked about first
    const self = ownRoles(ctx, grant, "Roles in this account",
      "makes the grant of the key you are signed in with inactive, so its requests here are refused");
    openDialog({
      title: `Edit the grant of ${grant.appKey}`,
      submitLabel: "Save",
      body: [
        field("Label", label),
        self.choices,
        field("Status", select("status", [["active", "Active"], ["inactive", "Inactive (its requests here are refused)"]], grant.status)),
        self.confirmation,
      ],
      async onSubmit(form, control) {
        const change = {};
        const newLabel = String(form.get("label")).trim();
        const roles = checkedRoles(form);
        if (newLabel !== grant.label) change.label = newLabel;
        if (!sameRoles(roles, grant.roles)) change.roles = roles;
        if (form.get("status") !== grant.status) change.status = String(form.get("status"));
        if (!self.confirmed(control, roles, change.status)) return true;
        if (Object.keys(change).length) await api.patch(grantPath(grant.appKey), change);
        if (self.mine && (change.roles || change.status)) {
          control.dialog.addEventListener("close", () => ctx.recheck());
        } else {
          table.refresh();
        }
      },
    });
  }

  function removeGrant(grant) {
    confirmDialog({
      title: `Remove ${grant.appKey}?`,
      message: `The key loses its roles in account ${account} at once; integrations that use it here stop working. The key itself stays with its owner account, ${grant.account}.`,
      confirmLabel: "Remove external key",
      async onConfirm() {
        await api.remove(grantPath(grant.appKey));
        table.refresh();
      },
    });
  }

  const toolbar = tableToolbar({ label: "Find external keys", query, table, filters: [
    ["status", "Status", STATUS_FILTER],
    ["role", "Role", [["", "All"], ...me.definedRoles.map((r) => [r, r])]],
  ] });
  if (may.edit) {
    const button = h("button", { type: "button", class: "primary" }, "Add external key");
    button.addEventListener("click", add);
    toolbar.append(h("div", { class: "actions" }, button));
  }
  replaceChildren(panel, h("h2", { class: "visually-hidden" }, "External keys"), toolbar, table.nodes);
  return { refresh: table.refresh };
}
