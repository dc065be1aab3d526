// The page: sign-in, the tabs, and what moves between them. The URL's fragment names
// the account and the tab (#/acme/generated), so a reload stays where it was; nothing
// is kept in the browser's storage.

import * as api from "./api.js";
import { auditTab } from "./audit.js";
import { closeAllDialogs } from "./dialogs.js";
import { clearError, enable, h, showError } from "./dom.js";
import { externalTab } from "./external.js";
import { generatedTab } from "./keys.js";
import { settingsTab } from "./settings.js";

const TABS = ["generated", "external", "settings", "audit"];
const DEFAULT_PERIOD = 3;
const $ = (id) => document.getElementById(id);

let ctx = null; // {account, me, period, periodKnown, views}

function route() {
  const [account, tab] = window.location.hash.replace(/^#\/?/, "").split("/");
  return { account: account ? decodeURIComponent(account) : "", tab: TABS.includes(tab) ? tab : "" };
}

function showSignIn(notice) {
  closeAllDialogs();
  ctx = null;
  for (const id of TABS) $(`panel-${id}`).replaceChildren();
  $("workspace").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-notice").textContent = notice || "";
  $("sign-in-token").value = "";
  clearError($("sign-in-error"));
  $("sign-in-key").focus();
}

// Why a session is over, from the API's 401. The session cookie's Max-Age is the
// session's lifetime, so the browser drops the cookie as the session expires and the API
// sees no cookie at all (missing_credentials), never session_expired: whether the
// session's time was up is the page's to tell, from the end the sign-in answer gave.
const EXPIRED = "Your session has expired. Sign in again to continue.";
const REASONS = {
  session_expired: EXPIRED,
  invalid_session: "Your session is no longer valid: the key's token was renewed or the key was deleted. Sign in again.",
  session_ended: "This session was signed out. Sign in again to continue.",
  key_inactive: "The key you are signed in with was deactivated: its sessions are refused while it stays inactive. Sign in with another key, or have this one activated again.",
};
// the Date header counts whole seconds, and the cookie's Max-Age runs from its arrival
const EXPIRY_SLACK_MS = 2_000;
let sessionEndsAt = null; // by this browser's clock; unknown after a reload

function endedWhy(failure, reloaded) {
  if (failure.code in REASONS) return REASONS[failure.code];
  if (failure.code === "missing_credentials") {
    // a reload of a page that named an account had a session, and the likeliest reason
    // its cookie is gone is that its time was up
    if (reloaded) return EXPIRED;
    if (sessionEndsAt !== null) {
      return Date.now() + EXPIRY_SLACK_MS >= sessionEndsAt ? EXPIRED
        : "Your session has ended: you signed out in another tab, or the browser's cookies were cleared. Sign in again to continue.";
    }
    return "Your session has expired, or you signed out in another tab. Sign in again to continue.";
  }
  return `You were signed out: ${failure.message}`;
}

// The session ended while the page was open: back to sign-in, saying why.
api.whenSignedOut((failure) => {
  if (!ctx) return;
  showSignIn(endedWhy(failure, false));
});

function allowedTabs(may) {
  return TABS.filter((tab) => (tab === "generated" ? may.view || may.renewToken : may.view || (tab === "settings" && may.editSettings)));
}

async function enter(account, tab) {
  const me = await api.get(api.accountPath(account, "me"));
  const allowed = allowedTabs(me.permissions);
  if (!allowed.length) {
    // edit alone: every tab needs one more permission (a list, the settings)
    throw new Error(`In account ${account} this key may change API keys but not view them, and this page needs that: ask for a role that may view API keys.`);
  }
  ctx = { account, me, period: DEFAULT_PERIOD, periodKnown: false, views: {}, recheck };
  if (me.permissions.view) {
    try {
      ctx.period = (await api.get(api.accountPath(account, "settings"))).renewalPeriodMonths;
      ctx.periodKnown = true;
    } catch (failure) {
      if (failure.status === 401) return;
    }
  }
  $("sign-in").hidden = true;
  $("workspace").hidden = false;
  $("who").hidden = false;
  $("who-account").textContent = account;
  $("who-key").textContent = me.appKey;
  $("export").hidden = !me.permissions.view;
  clearError($("export-error"));
  for (const name of TABS) $(`tab-${name}`).hidden = !allowed.includes(name);
  ctx.views = {
    generated: generatedTab(ctx, $("panel-generated")),
    external: externalTab(ctx, $("panel-external")),
    settings: settingsTab(ctx, $("panel-settings")),
    audit: auditTab(ctx, $("panel-audit")),
  };
  select(allowed.includes(tab) ? tab : allowed[0], false);
}

// The signed-in key changed itself (its roles, its status): what it may do here is read
// again and the tabs are drawn anew from it. A key left with nothing this page can show
// is signed out and told why, rather than left before a table whose buttons the API
// now refuses.
async function recheck() {
  if (!ctx) return;
  const { account } = ctx;
  const tab = route().tab;
  try {
    await enter(account, tab);
  } catch (failure) {
    if (failure.status === 401) return; // the session ended: sign-in says so already
    await api.signOut().catch(() => {});
    sessionEndsAt = null;
    showSignIn(`The key you are signed in with may no longer use this page in account ${account}: `
      + `${failure.message.replace(/[.\s]*$/, "")}. Sign in with a key that may view API keys.`);
    $("sign-in-account").value = account;
    return;
  }
  const chosen = document.querySelector('[role="tab"][aria-selected="true"]');
  if (chosen) chosen.focus();
}

function select(tab, focus) {
  if (!ctx) return;
  for (const name of TABS) {
    const button = $(`tab-${name}`);
    const chosen = name === tab;
    button.setAttribute("aria-selected", String(chosen));
    button.tabIndex = chosen ? 0 : -1;
    $(`panel-${name}`).hidden = !chosen;
  }
  revealTab($(`tab-${tab}`));
  if (focus) $(`tab-${tab}`).focus();
  const wanted = `#/${encodeURIComponent(ctx.account)}/${tab}`;
  if (window.location.hash !== wanted) window.history.replaceState(null, "", wanted);
  ctx.views[tab].refresh();
}

// Where the tab row scrolls sideways (a narrow screen), bring the chosen tab fully into
// it: focus alone does not always, and scrollIntoView would scroll the page as well.
function revealTab(button) {
  const list = button.parentElement.getBoundingClientRect();
  const box = button.getBoundingClientRect();
  // whole pixels, rounded away from the edge: scroll offsets snap to them
  if (box.left < list.left) button.parentElement.scrollLeft -= Math.ceil(list.left - box.left);
  else if (box.right > list.right) {
    button.parentElement.scrollLeft += Math.ceil(box.right - list.right);
  }
}

// Tabs as the ARIA pattern has them: arrows move between tabs, Home/End to the ends.
$("tabs").addEventListener("keydown", (event) => {
  const tabs = [...document.querySelectorAll('[role="tab"]:not([hidden])')];
  const at = tabs.indexOf(document.activeElement);
  if (at < 0) return;
  const moves = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 };
  if (!(event.key in moves)) return;
  event.preventDefault();
  const target = tabs[(moves[event.key] + tabs.length) % tabs.length];
  select(target.dataset.tab, true);
});
for (const name of TABS) $(`tab-${name}`).addEventListener("click", () => select(name, false));

// The skip link moves the focus without a fragment: "#main" would name an account.
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});

// Past the failure budget sign-in is refused (429 too_many_failures) for a while: said in
// the page's words, and the button waits as long as the answer said.
const TOO_MANY = "Too many failed sign-ins from here.";
let signInWait = null; // the timer that enables Sign in again

function holdSignIn(button, failure) {
  const error = $("sign-in-error");
  const seconds = failure.retryAfter;
  if (seconds === null || seconds === undefined || seconds <= 0) {
    error.textContent = `${TOO_MANY} Wait a little, then try again.`;
    return false;
  }
  error.textContent = `${TOO_MANY} ${api.retryWords(seconds)}`;
  button.disabled = true;
  clearTimeout(signInWait);
  signInWait = setTimeout(() => {
    signInWait = null;
    button.disabled = false;
    if (error.textContent.startsWith(TOO_MANY)) error.textContent = `${TOO_MANY} You may try again now.`;
  }, seconds * 1000);
  return true;
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (signInWait !== null) return; // still waiting out the failure budget
  const error = $("sign-in-error");
  clearError(error);
  $("sign-in-notice").textContent = "";
  const keyInput = $("sign-in-key");
  const tokenInput = $("sign-in-token");
  const accountInput = $("sign-in-account");
  const button = event.target.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const session = await api.signIn(keyInput.value.trim(), tokenInput.value.trim());
    tokenInput.value = ""; // the token is not kept, not even in the form
    sessionEndsAt = session.expiresAt;
    const account = accountInput.value.trim() || session.account;
    // back where the session ended (the fragment still names the account and tab)
    const was = route();
    try {
      await enter(account, was.account === account ? was.tab : "generated");
    } catch (failure) {
      // signed in, but this key may not use this page in that account: say so, and end
      // the session rather than leave a cookie nobody uses
      await api.signOut().catch(() => {});
      showError(error, failure);
      return;
    }
    $("main").focus();
  } catch (failure) {
    tokenInput.value = "";
    if (failure.code !== "too_many_failures") showError(error, failure);
    // the button stays disabled a while: the focus stays in the form
    else if (holdSignIn(button, failure)) tokenInput.focus();
  } finally {
    if (signInWait === null) enable(button);
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api.signOut();
    sessionEndsAt = null;
    showSignIn("You are signed out.");
    window.history.replaceState(null, "", window.location.pathname);
  } catch (failure) {
    showError($("export-error"), failure);
  }
});

$("export").addEventListener("click", async () => {
  const button = $("export");
  const error = $("export-error");
  clearError(error);
  button.disabled = true;
  try {
    const file = await api.download(api.accountPath(ctx.account, "export"), { format: "xlsx" });
    const link = h("a", { href: URL.createObjectURL(file.blob), download: file.filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  } catch (failure) {
    showError(error, failure);
  } finally {
    enable(button);
  }
});

window.addEventListener("hashchange", () => {
  const wanted = route();
  if (ctx && wanted.account === ctx.account && wanted.tab) select(wanted.tab, false);
  else if (ctx && wanted.account && wanted.account !== ctx.account) start();
});

async function start() {
  const { account, tab } = route();
  if (!account) {
    showSignIn("");
    return;
  }
  try {
    await enter(account, tab);
  } catch (failure) {
    if (ctx) return;
    if (failure.status === 401) {
      // the page named an account, so it had a session: say it is over, and offer to
      // sign in to the same account again
      showSignIn(endedWhy(failure, true));
      $("sign-in-account").value = account;
    } else {
      showSignIn(failure.message);
    }
  }
}

start();
