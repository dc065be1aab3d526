// keygate's management API, as the page calls it: same origin, the session cookie as
// the credential (HttpOnly: this code never sees it), X-Keygate-CSRF on every write.

export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId || "";
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
  const failure = error
    ? new ApiError(response.status, error.code, error.message, error.requestId)
    : new ApiError(response.status, "unexpected", `keygate answered ${response.status} ${response.statusText}`);
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
  // the answer also holds the session token: it is deliberately dropped here (the
  // HttpOnly cookie carries it), so no script on the page can read it later.
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
