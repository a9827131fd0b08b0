// Live space events over the WebSocket, reconnecting by itself.

/** Close codes with a meaning for the console. */
export const CLOSE_SPACE_DELETED = 4404;
export const CLOSE_KEY_REVOKED = 4401;

/**
 * SpaceEvents keeps one subscribed WebSocket open to a space.
 * handlers: onState(state), onOpen(), onEvent(msg), onGone(), onRevoked(), onError(msg).
 */
export class SpaceEvents {
  constructor(spaceId, key, handlers) {
    this.spaceId = spaceId;
    this.key = key;
    this.h = handlers;
    this.ws = null;
    this.stopped = false;
    this.attempt = 0;
    this.timer = null;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/spaces/${encodeURIComponent(this.spaceId)}/ws`;
    this.h.onState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new WebSocket(url, ['stello.v1', `stello.key.${this.key}`]);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      ws.send(JSON.stringify({ type: 'space.subscribe', id: 'subscribe' }));
      this.h.onState('live');
      this.h.onOpen();
    };
    ws.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg.type === 'space.event') this.h.onEvent(msg);
      else if (msg.type === 'error' && msg.id === 'subscribe') {
        this.h.onState('no-events');
        this.h.onError(msg);
      }
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (e.code === CLOSE_SPACE_DELETED) {
        this.stopped = true;
        this.h.onState('off');
        this.h.onGone();
        return;
      }
      if (e.code === CLOSE_KEY_REVOKED) {
        this.stopped = true;
        this.h.onState('off');
        this.h.onRevoked();
        return;
      }
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    this.h.onState('reconnecting');
    const delay = Math.min(10000, 300 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt++;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Closes the connection for good. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, 'leaving the space');
    }
  }
}
