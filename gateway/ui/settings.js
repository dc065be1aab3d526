// The Settings tab: the renewal-reminder period of the account.

import * as api from "./api.js";
import { clearError, enable, h, radios, replaceChildren, showError } from "./dom.js";

export function settingsTab(ctx, panel) {
  const { me, account } = ctx;
  const editable = me.permissions.editSettings;
  const error = h("p", { class: "error", role: "alert" });
  const saved = h("p", { class: "status", role: "status" });
  const PERIODS = [
    ["3", "3 months", "(recommended)"],
    ["6", "6 months"],
  ];
  const apply = h("button", { type: "submit", class: "primary" }, "Apply");
  // who may change it chooses among radio buttons; who may only read it is told the
  // period in words (disabled radio buttons are skipped by Tab, and a screen reader's
  // user moving through the form would never reach the one that is current)
  const choices = editable
    ? radios("Renewal reminder period", "renewalPeriodMonths", PERIODS, ctx.periodKnown ? String(ctx.period) : "")
    : null;
  for (const input of choices ? choices.querySelectorAll("input") : []) input.required = true;
  const current = h("strong", { class: "current-period" });
  const readOnly = editable ? null
    : h("p", { class: "read-only-value" }, "Renewal reminder period: ", current);
  function showCurrent() {
    if (editable) return;
    const known = PERIODS.find(([value]) => ctx.periodKnown && value === String(ctx.period));
    current.textContent = known ? [known[1], known[2]].filter(Boolean).join(" ")
      : ctx.periodKnown ? `${ctx.period} months` : "not known (it could not be read)";
  }
  showCurrent();
  // without the view permission the period cannot be read: none is shown as current
  const unknown = me.permissions.view ? null
    : h("p", { class: "hint" }, "The current period is not shown: reading it needs the permission to view API keys.");
  const form = h("form", { class: "stack", "aria-label": "Account settings" },
    h("p", {}, "Keys whose token is older than this period are marked orange in the Generated keys tab, and red three months later, as a reminder to renew their token."),
    choices,
    readOnly,
    unknown,
    h("p", { class: "hint" }, "Tokens never expire because of this setting: it only decides when a key is marked for renewal."),
    editable ? apply : h("p", { class: "hint" }, "Changing it needs the permission to edit API keys settings."),
    saved,
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(error);
    saved.textContent = "";
    const chosen = new FormData(form).get("renewalPeriodMonths");
    if (!chosen) return;
    apply.disabled = true;
    try {
      const answer = await api.put(api.accountPath(account, "settings"), { renewalPeriodMonths: Number(chosen) });
      ctx.period = answer.renewalPeriodMonths;
      ctx.periodKnown = true;
      saved.textContent = `Applied: ${answer.renewalPeriodMonths} months.`;
    } catch (failure) {
      showError(error, failure);
    } finally {
      enable(apply);
    }
  });
  replaceChildren(panel, h("h2", {}, "Settings"), form);

  async function refresh() {
    if (!me.permissions.view) return;
    clearError(error);
    try {
      const answer = await api.get(api.accountPath(account, "settings"));
      ctx.period = answer.renewalPeriodMonths;
      ctx.periodKnown = true;
      if (choices) {
        for (const input of choices.querySelectorAll("input")) input.checked = input.value === String(ctx.period);
      }
      showCurrent();
    } catch (failure) {
      showError(error, failure);
    }
  }
  return { refresh };
}
