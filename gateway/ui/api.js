// keygate's management API, as the page calls it: same origin, the session cookie as
// the credential (HttpOnly: this code never sees it), X-Keygate-CSRF on every write.

export class ApiError extends Error {
  constructor(status, code, message, requestId, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId || "";
    this.retryAfter = retryAfter; // seconds to wait, when the answer said (Retry-After)
  }
}

const BASE = "/api/v1";
let onSignedOut = null;

// Called with the ApiError when a request is refused with 401 (the session ended).
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

export function accountPath(account, ...parts) {
  return [`/accounts/${encodeURIComponent(account)}`, ...parts.map(encodeURIComponent)].join("/");
}

function url(path, query) {
  const target = new URL(BASE + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") {
      target.searchParams.set(name, String(value));
    }
  }
  return target.pathname + target.search;
}

// Retry-After (RFC 9110): a number of seconds, or an HTTP date; null when absent or
// not understood.
export function retryAfterSeconds(value, now = Date.now()) {
  const text = (value || "").trim();
  if (!text) return null;
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - now) / 1000));
}

// "Try again in 30 seconds." for a short wait, "Try again at 14:05." for a longer one
// (by this browser's clock, to the minute).
export function retryWords(seconds, now = Date.now()) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds <= 1) return "Try again in a second.";
  if (seconds <= 90) return `Try again in ${seconds} seconds.`;
  const at = new Date(now + seconds * 1000);
  const clock = at.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return `Try again at ${clock}.`;
}

async function send(method, path, { body, query, signIn = false, accept } = {}) {
  const headers = { Accept: accept || "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-Keygate-CSRF"] = "1";
  const init = {
    method,
    headers,
    credentials: "same-origin",
    cache: "no-store",
    // the page's own Referrer-Policy is no-referrer, which would make a write's Origin
    // "null"; for these same-origin calls the real origin is sent (CSRF checks it)
    referrerPolicy: "same-origin",
  };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch {
    throw new ApiError(0, "unreachable", "keygate did not answer; check that it is running and reachable, then try again");
  }
  if (response.ok) return response;
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    error = null;
  }
  // a refusal that says when to come back (429 past a failure budget, 503) says it in
  // words with its message; an answer that is not keygate's JSON (a front proxy's
  // error page, say) is named by its status alone
  const wait = retryAfterSeconds(response.headers.get("Retry-After"));
  const message = error
    ? error.message
    : `the server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  const words = retryWords(wait);
  const failure = new ApiError(response.status, error ? error.code : "unexpected",
    words ? `${message.replace(/[.\s]*$/, "")}. ${words}` : message, error ? error.requestId : "", wait);
  if (response.status === 401 && !signIn && onSignedOut) onSignedOut(failure);
  throw failure;
}

export async function json(method, path, options) {
  const response = await send(method, path, options);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, query) => json("GET", path, { query });
export const post = (path, body) => json("POST", path, { body });
export const put = (path, body) => json("PUT", path, { body });
export const patch = (path, body) => json("PATCH", path, { body });
export const remove = (path) => json("DELETE", path);

export async function signIn(appKey, appToken) {
  const response = await send("POST", "/auth/login",
    { body: { appKey, appToken, cookie: true }, signIn: true });
  const answer = await response.json();
  // with cookie: true the answer holds no session token (the HttpOnly cookie alone
  // carries it), so no script on the page can read it, now or later.
  // `expiresAt` is when the session ends by this browser's clock: the server's
  // `expires`, moved by how far this clock is from the server's (its Date header).
  const serverNow = Date.parse(response.headers.get("Date") || "");
  const skew = Number.isNaN(serverNow) ? 0 : Date.now() - serverNow;
  const expires = Date.parse(answer.expires);
  return {
    appKey: answer.appKey,
    account: answer.account,
    expires: answer.expires,
    expiresAt: Number.isNaN(expires) ? null : expires + skew,
  };
}

export async function signOut() {
  await json("POST", "/auth/logout", { signIn: true });
}

// A file from the API (the export), with the name the server gave it.
export async function download(path, query) {
  const response = await send("GET", path, { query, accept: "*/*" });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  return { blob: await response.blob(), filename: match ? match[1] : "export" };
}
