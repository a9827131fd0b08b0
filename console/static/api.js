// REST calls and turn streams of the Stello API, as used by the console.

/** An error answered by the server ({error, code}) or a network failure (code NETWORK). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.code}: ${this.message}`;
  }
}

/** Builds the client; getKey returns the API key to send. */
export function createApi(getKey) {
  async function raw(method, path, { body, headers = {}, signal } = {}) {
    const h = { 'X-API-Key': getKey(), ...headers };
    if (body !== undefined) h['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), signal, cache: 'no-store' });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new ApiError(0, 'NETWORK', 'the server could not be reached');
    }
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  async function json(method, path, body) {
    const res = await raw(method, path, { body });
    if (res.status === 204) return null;
    return res.json();
  }

  const sp = (id) => `/spaces/${encodeURIComponent(id)}`;
  const se = (spaceId, id) => `${sp(spaceId)}/sessions/${encodeURIComponent(id)}`;

  return {
    raw,
    listSpaces: () => json('GET', '/spaces'),
    createSpace: (label) => json('POST', '/spaces', { label }),
    getSpace: (id) => json('GET', sp(id)),
    patchSpace: (id, patch) => json('PATCH', sp(id), patch),
    deleteSpace: (id) => json('DELETE', sp(id)),
    tree: (spaceId) => json('GET', `${sp(spaceId)}/sessions`),
    session: (spaceId, id) => json('GET', se(spaceId, id)),
    async messages(spaceId, id) {
      // Oldest first, in pages, bounded.
      const out = [];
      const page = 500;
      for (let offset = 0; offset < 20 * page; offset += page) {
        const got = await json('GET', `${se(spaceId, id)}/messages?limit=${page}&offset=${offset}`);
        out.push(...got);
        if (got.length < page) break;
      }
      return out;
    },
    fork: (spaceId, id, opts) => json('POST', `${se(spaceId, id)}/fork`, opts),
    archive: (spaceId, id) => json('POST', `${se(spaceId, id)}/archive`),
    consolidate: (spaceId, id) => json('POST', `${se(spaceId, id)}/consolidate`),
    integrate: (spaceId) => json('POST', `${sp(spaceId)}/integrate`),
    getSlot: (spaceId, id, slot) => json('GET', `${se(spaceId, id)}/${slot}`),
    putSlot: (spaceId, id, slot, content) => json('PUT', `${se(spaceId, id)}/${slot}`, { content }),
    cancelTurn: (spaceId, id, turnId) => json('POST', `${se(spaceId, id)}/turns/${encodeURIComponent(turnId)}/cancel`),
    /** Starts a streamed turn; answers the open SSE response. */
    startTurn: (spaceId, id, input) =>
      raw('POST', `${se(spaceId, id)}/turn`, { body: { input }, headers: { Accept: 'text/event-stream' } }),
    /** Resumes a turn's stream from a code-point offset. */
    resumeTurn: (spaceId, id, turnId, offset) =>
      raw('GET', `${se(spaceId, id)}/turns/${encodeURIComponent(turnId)}/stream`, {
        headers: { Accept: 'text/event-stream', 'Last-Event-ID': String(offset) },
      }),
  };
}

async function errorFrom(res) {
  let code = `HTTP_${res.status}`;
  let message = res.statusText || 'request failed';
  try {
    const b = await res.json();
    if (b && typeof b.code === 'string') code = b.code;
    if (b && typeof b.error === 'string') message = b.error;
  } catch {
    // not JSON: keep the status
  }
  const err = new ApiError(res.status, code, message);
  const ra = res.headers.get('Retry-After');
  if (ra) err.retryAfter = Number(ra);
  return err;
}

/**
 * Reads Server-Sent Events from a fetch response body, yielding
 * {event, data, id} (id is null when the event had none). A connection that
 * breaks makes the iterator throw.
 */
export async function* readSSE(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let event = 'message';
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
        if (line === '') {
          if (data.length > 0) yield { event, data: data.join('\n'), id };
          event = 'message';
          data = [];
          id = null;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
        else if (field === 'id') id = val;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** Number of Unicode code points in s (the unit of stream offsets). */
export function codePoints(s) {
  let n = 0;
  for (const _ of s) n++; // eslint-disable-line no-unused-vars
  return n;
}
