// The Stello web console: spaces, the live session tree, streamed turns,
// prompts and memory, over the public API only.
import { ApiError, createApi, readSSE, codePoints } from './api.js';
import { SpaceEvents } from './events.js';
import { applyEvent, findNode, renderTree } from './tree.js';

const KEY_STORAGE = 'stello.apiKey';
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || '',
  spaces: [],
  space: null, // Space
  tree: null, // SessionTreeNode
  sessionId: null,
  session: null, // SessionMeta of the selected session
  turns: new Map(), // sessionId -> running turn
  ourTurns: new Set(), // turnIds started here (their commits need no reload)
  events: null,
  treeRefetch: null,
  msgLoad: 0, // generation counter: a stale load never overwrites a newer one
};

const api = createApi(() => state.key);

// ---------- errors and notices ----------

function describe(err) {
  if (err instanceof ApiError) return { code: err.code, text: err.message };
  return { code: 'ERROR', text: String(err?.message || err) };
}

/** Shows an error with its code in a toast that stays until dismissed or replaced. */
function showError(err, context) {
  if (err?.name === 'AbortError') return;
  const { code, text } = describe(err);
  if (code === 'UNAUTHORIZED') {
    askKey(`${code}: ${text}`);
    return;
  }
  toast(`${context ? context + ': ' : ''}${text}`, code, 'error');
}

function toast(text, code, kind = 'info') {
  const box = $('toasts');
  const t = document.createElement('div');
  t.className = `toast toast-${kind}`;
  if (code) {
    const c = document.createElement('code');
    c.className = 'code';
    c.textContent = code;
    t.append(c);
  }
  const s = document.createElement('span');
  s.textContent = text;
  t.append(s);
  const x = document.createElement('button');
  x.type = 'button';
  x.className = 'ghost close';
  x.setAttribute('aria-label', 'Dismiss');
  x.textContent = '×';
  x.addEventListener('click', () => t.remove());
  t.append(x);
  box.append(t);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => t.remove(), kind === 'error' ? 12000 : 4000);
}

// ---------- key ----------

function askKey(message) {
  stopEvents();
  const d = $('key-dialog');
  $('key-error').textContent = message || '';
  $('key-input').value = '';
  if (!d.open) d.showModal();
  $('key-input').focus();
}

async function useKey(key) {
  state.key = key;
  try {
    state.spaces = await api.listSpaces();
  } catch (err) {
    const { code, text } = describe(err);
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = '';
    askKey(`${code}: ${text}`);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  const d = $('key-dialog');
  if (d.open) d.close();
  $('app').dataset.ready = 'true';
  renderSpaces();
  const want = parseHash();
  const sp = state.spaces.find((s) => s.id === want.spaceId) || state.spaces[state.spaces.length - 1];
  if (sp) await selectSpace(sp.id, want.sessionId);
  else {
    clearSpace();
    $('new-space-label').focus();
  }
}

// ---------- location ----------

function parseHash() {
  const m = location.hash.match(/^#\/spaces\/([^/]+)(?:\/sessions\/([^/]+))?/);
  return m ? { spaceId: decodeURIComponent(m[1]), sessionId: m[2] ? decodeURIComponent(m[2]) : null } : {};
}

function writeHash() {
  const h = state.space ? `#/spaces/${state.space.id}${state.sessionId ? `/sessions/${state.sessionId}` : ''}` : '#/';
  if (location.hash !== h) history.replaceState(null, '', h);
}

// ---------- spaces ----------

function renderSpaces() {
  const ul = $('space-list');
  ul.replaceChildren();
  if (state.spaces.length === 0) {
    const li = document.createElement('li');
    li.className = 'empty-small';
    li.textContent = 'No spaces yet.';
    ul.append(li);
  }
  for (const sp of state.spaces) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'space-item';
    b.dataset.id = sp.id;
    b.textContent = sp.label;
    b.title = `${sp.label} · created ${fmtTime(sp.createdAt)}`;
    if (state.space?.id === sp.id) b.setAttribute('aria-current', 'true');
    b.addEventListener('click', () => selectSpace(sp.id));
    li.append(b);
    ul.append(li);
  }
  $('crumb').textContent = state.space ? state.space.label : '';
}

async function createSpace(label) {
  try {
    const sp = await api.createSpace(label);
    state.spaces.push(sp);
    $('new-space-label').value = '';
    await selectSpace(sp.id);
    toast(`Space “${sp.label}” created`);
  } catch (err) {
    showError(err, 'Create space');
  }
}

function clearSpace() {
  stopEvents();
  state.space = null;
  state.tree = null;
  state.sessionId = null;
  state.session = null;
  renderSpaces();
  $('tree').replaceChildren();
  renderHead();
  setMessagesEmpty(state.spaces.length ? 'Pick a space.' : 'Create a space to start.');
  fillSpaceForm();
  fillSlots(null);
  fillMemory(null);
  writeHash();
}

async function selectSpace(id, sessionId) {
  const sp = state.spaces.find((s) => s.id === id);
  if (!sp) return;
  if (state.space?.id !== id) {
    stopEvents();
    state.space = sp;
    state.tree = null;
    state.sessionId = null;
    state.session = null;
  }
  renderSpaces();
  fillSpaceForm();
  await loadTree();
  startEvents();
  const target = (sessionId && findNode(state.tree, sessionId)) ? sessionId : state.tree?.id;
  if (target) await selectSession(target, { focus: true });
}

async function renameAndSaveSpace(e) {
  e.preventDefault();
  if (!state.space) return;
  const patch = {
    label: $('space-label').value.trim(),
    systemPrompt: $('space-system').value,
    consolidatePrompt: $('space-consolidate').value,
    integratePrompt: $('space-integrate').value,
  };
  const state0 = $('space-state');
  state0.textContent = 'Saving…';
  try {
    const sp = await api.patchSpace(state.space.id, patch);
    Object.assign(state.space, sp);
    const i = state.spaces.findIndex((s) => s.id === sp.id);
    if (i >= 0) state.spaces[i] = state.space;
    state0.textContent = 'Saved';
    renderSpaces();
    await loadTree();
    if (state.sessionId) loadSlots();
  } catch (err) {
    state0.textContent = '';
    showError(err, 'Save space');
  }
}

function fillSpaceForm() {
  const sp = state.space;
  for (const id of ['space-label', 'space-system', 'space-consolidate', 'space-integrate']) $(id).disabled = !sp;
  $('space-form').querySelector('button[type=submit]').disabled = !sp;
  $('delete-space').disabled = !sp;
  $('space-label').value = sp?.label ?? '';
  $('space-system').value = sp?.systemPrompt ?? '';
  $('space-consolidate').value = sp?.consolidatePrompt ?? '';
  $('space-integrate').value = sp?.integratePrompt ?? '';
  $('space-state').textContent = '';
}

async function deleteSpace() {
  const sp = state.space;
  if (!sp) return;
  if (!(await confirmDialog(`Delete the space “${sp.label}” with all its sessions? This cannot be undone.`, 'Delete space'))) return;
  try {
    stopEvents();
    await api.deleteSpace(sp.id);
    state.spaces = state.spaces.filter((s) => s.id !== sp.id);
    toast(`Space “${sp.label}” deleted`);
    const next = state.spaces[state.spaces.length - 1];
    if (next) await selectSpace(next.id);
    else {
      clearSpace();
      $('new-space-label').focus();
    }
  } catch (err) {
    showError(err, 'Delete space');
    startEvents();
  }
}

// ---------- tree and live events ----------

async function loadTree() {
  if (!state.space) return;
  const spaceId = state.space.id;
  try {
    const t = await api.tree(spaceId);
    if (state.space?.id !== spaceId) return;
    state.tree = t;
    drawTree();
  } catch (err) {
    if (err instanceof ApiError && err.code === 'NOT_FOUND') return spaceGone();
    showError(err, 'Load sessions');
  }
}

function drawTree() {
  renderTree($('tree'), state.tree, state.sessionId, (id) => selectSession(id, { focus: true }));
  const node = state.sessionId && findNode(state.tree, state.sessionId);
  if (node && state.session) {
    state.session.label = node.label;
    state.session.status = node.status;
    state.session.turnCount = node.turnCount;
    renderHead();
  }
}

function scheduleTreeRefetch() {
  clearTimeout(state.treeRefetch);
  state.treeRefetch = setTimeout(loadTree, 150);
}

function startEvents() {
  stopEvents();
  if (!state.space) return;
  const spaceId = state.space.id;
  let opened = 0;
  state.events = new SpaceEvents(spaceId, state.key, {
    onState: setLive,
    onOpen: () => {
      // A reconnect may have missed events: read the tree again.
      if (opened++ > 0) loadTree();
    },
    onEvent: (msg) => onSpaceEvent(msg),
    onGone: () => spaceGone(),
    onRevoked: () => askKey('UNAUTHORIZED: the API key was revoked'),
    onError: (msg) => toast(`Live events unavailable: ${msg.message}`, msg.code, 'error'),
  });
}

function stopEvents() {
  if (state.events) state.events.stop();
  state.events = null;
  setLive('off');
}

function setLive(s) {
  const el = $('live');
  el.dataset.state = s;
  el.textContent = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', off: 'offline', 'no-events': 'no live events' }[s] || s;
}

function onSpaceEvent(msg) {
  const applied = applyEvent(state.tree, msg);
  if (applied === null) scheduleTreeRefetch();
  else if (applied) drawTree();
  const cur = state.sessionId;
  if (msg.event === 'turn.committed' && msg.sessionId === cur && !state.ourTurns.has(msg.turnId) && !state.turns.has(cur)) {
    loadMessages(); // someone else's turn on the session on screen
  }
  if ((msg.event === 'memory.updated' || msg.event === 'insight.updated') && (msg.sessionId === cur || msg.sessionId === state.tree?.id)) {
    loadMemory();
  }
  if (msg.event === 'session.updated' && msg.sessionId === cur) loadSlots();
}

function spaceGone() {
  const sp = state.space;
  if (!sp) return;
  state.spaces = state.spaces.filter((s) => s.id !== sp.id);
  toast(`The space “${sp.label}” no longer exists`, 'NOT_FOUND', 'error');
  clearSpace();
}

// ---------- session ----------

async function selectSession(id, { focus = false } = {}) {
  if (!state.space) return;
  if (state.sessionId !== id) fillSlots(null);
  state.sessionId = id;
  const node = findNode(state.tree, id);
  state.session = node ? { ...node } : { id };
  writeHash();
  drawTree();
  renderHead();
  const spaceId = state.space.id;
  api.session(spaceId, id).then((meta) => {
    if (state.sessionId === id) {
      state.session = { ...state.session, ...meta };
      renderHead();
    }
  }).catch((err) => showError(err, 'Load session'));
  await loadMessages();
  loadSlots();
  loadMemory();
  if (focus && !$('input').disabled) $('input').focus();
}

function renderHead() {
  const s = state.session;
  $('session-label').textContent = s ? s.label || '…' : state.space ? 'No session' : 'No space';
  const meta = $('session-meta');
  meta.replaceChildren();
  if (s) {
    const bits = [
      s.role === 'main' ? 'root' : 'fork',
      s.status,
      `${s.turnCount ?? 0} turns`,
    ];
    if (s.depth !== undefined) bits.push(`depth ${s.depth}`);
    if (s.scope) bits.push(`scope: ${s.scope}`);
    if (s.lastActiveAt) bits.push(`active ${fmtTime(s.lastActiveAt)}`);
    for (const b of bits) {
      const span = document.createElement('span');
      span.textContent = b;
      if (b === 'archived') span.className = 'tag tag-archived';
      meta.append(span);
    }
  }
  const archived = s?.status === 'archived';
  $('fork-btn').disabled = !s || archived;
  $('archive-btn').disabled = !s || archived || s.role === 'main';
  $('archive-btn').title = s?.role === 'main' ? 'The root session cannot be archived' : 'Archive this session';
  $('consolidate-btn').disabled = !s;
  $('integrate-btn').disabled = !state.space;
  const input = $('input');
  input.disabled = !s || archived;
  input.placeholder = archived
    ? 'This session is archived: it can be read, not written.'
    : 'Message · Enter to send · Shift+Enter for a new line · Esc cancels a running turn';
  syncComposer();
}

function setMessagesEmpty(text) {
  const box = $('messages');
  const d = document.createElement('div');
  d.className = 'empty';
  d.textContent = text;
  box.replaceChildren(d);
  delete box.dataset.session;
}

async function loadMessages() {
  if (!state.space || !state.sessionId) return;
  const gen = ++state.msgLoad;
  const spaceId = state.space.id;
  const id = state.sessionId;
  let msgs;
  try {
    msgs = await api.messages(spaceId, id);
  } catch (err) {
    if (gen === state.msgLoad) showError(err, 'Load messages');
    return;
  }
  if (gen !== state.msgLoad || state.sessionId !== id) return;
  const box = $('messages');
  box.replaceChildren();
  if (msgs.length === 0 && !state.turns.has(id)) {
    const d = document.createElement('div');
    d.className = 'empty';
    d.textContent = 'No messages yet. Say something below.';
    box.append(d);
  }
  for (const m of msgs) box.append(messageEl(m));
  const running = state.turns.get(id);
  if (running) box.append(running.userEl, running.el);
  box.dataset.session = id;
  box.scrollTop = box.scrollHeight;
}

function messageEl(m) {
  const d = document.createElement('article');
  d.className = `msg msg-${m.role}`;
  d.dataset.role = m.role;
  const head = document.createElement('header');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = { user: 'You', assistant: 'Assistant', tool: 'Tool', system: 'System' }[m.role] || m.role;
  head.append(who);
  if (m.timestamp) {
    const t = document.createElement('time');
    t.dateTime = m.timestamp;
    t.textContent = fmtTime(m.timestamp);
    head.append(t);
  }
  d.append(head);
  const body = document.createElement('div');
  body.className = 'body';
  body.textContent = m.content ?? '';
  d.append(body);
  for (const tc of m.toolCalls || []) {
    const c = document.createElement('div');
    c.className = 'tool-call';
    c.textContent = `→ ${tc.name}(${JSON.stringify(tc.input)})`;
    d.append(c);
  }
  return d;
}

// ---------- turns ----------

function atBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
}

/** Runs a streamed turn, resuming through the resume endpoint when the connection drops. */
async function sendTurn() {
  const input = $('input').value;
  if (!input.trim() || !state.space || !state.sessionId) return;
  if (state.turns.has(state.sessionId)) {
    setTurnStatus('A turn is still running on this session.');
    return;
  }
  const spaceId = state.space.id;
  const sessionId = state.sessionId;
  const box = $('messages');
  box.querySelector('.empty')?.remove();
  const turn = {
    spaceId, sessionId, turnId: null, offset: 0, text: '',
    userEl: messageEl({ role: 'user', content: input, timestamp: new Date().toISOString() }),
    el: messageEl({ role: 'assistant', content: '' }),
    body: null,
  };
  turn.body = turn.el.querySelector('.body');
  turn.el.classList.add('streaming');
  turn.userEl.classList.add('pending');
  state.turns.set(sessionId, turn);
  box.append(turn.userEl, turn.el);
  box.scrollTop = box.scrollHeight;
  $('input').value = '';
  syncComposer();
  setTurnStatus('Waiting for the model…', sessionId);

  let outcome;
  try {
    const res = await api.startTurn(spaceId, sessionId, input);
    turn.turnId = res.headers.get('Stello-Turn-Id');
    if (turn.turnId) state.ourTurns.add(turn.turnId);
    syncComposer();
    outcome = await consume(turn, res);
    for (let attempt = 0; outcome === 'dropped'; attempt++) {
      if (!turn.turnId || attempt >= 8) throw new ApiError(0, 'NETWORK', 'the connection dropped and the turn could not be resumed');
      setTurnStatus(`Connection lost; resuming from ${turn.offset}…`, sessionId);
      await sleep(Math.min(4000, 250 * 2 ** attempt));
      let r;
      try {
        r = await api.resumeTurn(spaceId, sessionId, turn.turnId, turn.offset);
      } catch (err) {
        if (err instanceof ApiError && err.code === 'NETWORK') continue;
        throw err;
      }
      outcome = await consume(turn, r);
    }
    finishTurn(turn, null);
  } catch (err) {
    finishTurn(turn, err);
  }
}

/** Reads one SSE response of a turn; answers 'end' or 'dropped', throws on event: error. */
async function consume(turn, res) {
  const box = $('messages');
  try {
    for await (const ev of readSSE(res)) {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        continue;
      }
      if (ev.event === 'start') {
        if (data.turnId) {
          turn.turnId = data.turnId;
          state.ourTurns.add(data.turnId);
          syncComposer();
        }
      } else if (ev.event === 'delta') {
        const stick = atBottom(box);
        const chunk = data.chunk ?? '';
        turn.text += chunk;
        turn.offset = ev.id !== null && ev.id !== '' && !Number.isNaN(Number(ev.id)) ? Number(ev.id) : turn.offset + codePoints(chunk);
        turn.body.textContent = turn.text;
        if (stick) box.scrollTop = box.scrollHeight;
        setTurnStatus('Streaming…', turn.sessionId);
      } else if (ev.event === 'end') {
        const fc = data.result?.turn?.finalContent;
        if (typeof fc === 'string') turn.text = fc;
        turn.body.textContent = turn.text;
        if (data.result?.turnId) state.ourTurns.add(data.result.turnId);
        return 'end';
      } else if (ev.event === 'error') {
        throw new ApiError(0, data.code || 'ERROR', data.error || 'the turn failed');
      }
    }
  } catch (err) {
    if (err instanceof ApiError) throw err;
    return 'dropped'; // network error while reading
  }
  return 'dropped'; // the body ended without end or error
}

function finishTurn(turn, err) {
  state.turns.delete(turn.sessionId);
  turn.el.classList.remove('streaming');
  turn.userEl.classList.remove('pending');
  if (err) {
    const { code, text } = describe(err);
    turn.el.classList.add('failed');
    turn.userEl.classList.add('failed');
    turn.el.dataset.code = code;
    const note = document.createElement('div');
    note.className = 'turn-error';
    const c = document.createElement('code');
    c.textContent = code;
    note.append(c, document.createTextNode(
      code === 'CANCELLED' ? ' Turn cancelled; nothing of it was saved.' : ` ${text}. Nothing of this turn was saved.`));
    turn.el.append(note);
    if (!turn.text) turn.body.textContent = '';
    setTurnStatus(code === 'CANCELLED' ? 'Cancelled.' : `Failed: ${code}`, turn.sessionId);
    if (code !== 'CANCELLED' && turn.sessionId === state.sessionId) {
      if (!$('input').value) $('input').value = turn.userEl.querySelector('.body').textContent;
    }
  } else {
    turn.el.dataset.done = 'true';
    setTurnStatus('', turn.sessionId);
    const node = findNode(state.tree, turn.sessionId);
    if (node && !turn.turnId) {
      // Without space events nothing else will count this turn.
      node.turnCount++;
      drawTree();
    }
  }
  if (turn.sessionId === state.sessionId) syncComposer();
}

async function cancelTurn() {
  const turn = state.turns.get(state.sessionId);
  if (!turn || !turn.turnId) return;
  $('cancel').disabled = true;
  setTurnStatus('Cancelling…', turn.sessionId);
  try {
    await api.cancelTurn(turn.spaceId, turn.sessionId, turn.turnId);
  } catch (err) {
    showError(err, 'Cancel');
    $('cancel').disabled = false;
  }
}

/** Send and Cancel share one slot so the composer never changes size. */
function syncComposer() {
  const running = state.sessionId && state.turns.get(state.sessionId);
  $('send').hidden = !!running;
  $('cancel').hidden = !running;
  $('cancel').disabled = !running || !running.turnId;
  $('send').disabled = $('input').disabled;
  if (!running) setTurnStatus('');
}

function setTurnStatus(text, sessionId) {
  if (sessionId && sessionId !== state.sessionId) return;
  $('turn-status').textContent = text;
}

// ---------- fork and archive ----------

function openFork() {
  if (!state.session || state.session.status === 'archived') return;
  const f = $('fork-form');
  f.reset();
  $('fork-error').textContent = '';
  $('fork-from').textContent = `From “${state.session.label}”.`;
  $('fork-dialog').showModal();
  $('fork-label').focus();
}

async function submitFork(e) {
  e.preventDefault();
  const f = $('fork-form');
  const label = $('fork-label').value.trim();
  const scope = $('fork-scope').value.trim();
  const context = f.elements.context.value;
  const opts = { label, context };
  if (scope) opts.scope = scope;
  try {
    const child = await api.fork(state.space.id, state.sessionId, opts);
    $('fork-dialog').close();
    if (!findNode(state.tree, child.id)) {
      applyEvent(state.tree, { event: 'session.created', sessionId: child.id, session: child });
    }
    await selectSession(child.id, { focus: true });
  } catch (err) {
    const { code, text } = describe(err);
    $('fork-error').textContent = `${code}: ${text}`;
  }
}

async function archiveSession() {
  const s = state.session;
  if (!s || s.role === 'main' || s.status === 'archived') return;
  if (!(await confirmDialog(`Archive “${s.label}”? It stays readable but takes no more turns or forks.`, 'Archive'))) return;
  try {
    const meta = await api.archive(state.space.id, s.id);
    applyEvent(state.tree, { event: 'session.archived', sessionId: s.id, session: meta });
    state.session = { ...state.session, ...meta };
    drawTree();
    renderHead();
    toast(`“${s.label}” archived`);
    $('tree').querySelector(`button[data-id="${CSS.escape(s.id)}"]`)?.focus();
  } catch (err) {
    showError(err, 'Archive');
  }
}

function confirmDialog(text, okLabel) {
  const d = $('confirm-dialog');
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = 'cancel';
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
  });
}

// ---------- inspector ----------

const SLOTS = ['system-prompt', 'consolidate-prompt', 'integrate-prompt'];

async function loadSlots() {
  if (!state.space || !state.sessionId) return fillSlots(null);
  const spaceId = state.space.id;
  const id = state.sessionId;
  // Read-only until loaded, so an edit is never overwritten by the load.
  if (document.querySelector('form.slot').dataset.session !== id) fillSlots(null);
  await Promise.all(SLOTS.map(async (slot) => {
    try {
      const v = await api.getSlot(spaceId, id, slot);
      if (state.sessionId === id) fillSlot(slot, v.content);
    } catch (err) {
      showError(err, `Load ${slot}`);
    }
  }));
}

function fillSlots(v) {
  for (const slot of SLOTS) fillSlot(slot, v, v === null);
}

function fillSlot(slot, content, disabled = false) {
  const f = document.querySelector(`form.slot[data-slot="${slot}"]`);
  if (disabled) delete f.dataset.session;
  else f.dataset.session = state.sessionId;
  const ta = f.querySelector('textarea');
  const st = f.querySelector('.slot-state');
  // A refresh (e.g. after a session.updated event) never overwrites what
  // the user is typing, nor the note of a save just made.
  if (!disabled && document.activeElement === ta && f.dataset.session === state.sessionId) return;
  ta.value = content ?? '';
  ta.disabled = disabled;
  f.querySelector('button').disabled = disabled;
  if (disabled) st.textContent = '';
  else if (content === null) st.textContent = 'not set';
  else if (st.textContent === 'not set') st.textContent = '';
}

async function saveSlot(e) {
  e.preventDefault();
  const f = e.currentTarget;
  const slot = f.dataset.slot;
  const st = f.querySelector('.slot-state');
  st.textContent = 'Saving…';
  try {
    const v = await api.putSlot(state.space.id, state.sessionId, slot, f.querySelector('textarea').value);
    st.textContent = 'Saved';
    f.querySelector('textarea').value = v.content ?? '';
  } catch (err) {
    st.textContent = '';
    showError(err, 'Save prompt');
  }
}

async function loadMemory() {
  if (!state.space || !state.sessionId) return fillMemory(null);
  const spaceId = state.space.id;
  const id = state.sessionId;
  const rootId = state.tree?.id;
  try {
    const [mem, ins, syn] = await Promise.all([
      api.getSlot(spaceId, id, 'memory'),
      api.getSlot(spaceId, id, 'insight'),
      rootId ? api.getSlot(spaceId, rootId, 'memory') : Promise.resolve({ content: null }),
    ]);
    if (state.sessionId !== id) return;
    fillMemory({ memory: mem.content, insight: ins.content, synthesis: syn.content });
  } catch (err) {
    showError(err, 'Load memory');
  }
}

function fillMemory(v) {
  const put = (id, text, none) => {
    const el = $(id);
    el.textContent = text ?? none;
    el.classList.toggle('none', text == null);
  };
  put('memory', v?.memory, 'Nothing consolidated yet.');
  put('insight', v?.insight, 'No pending insight.');
  put('synthesis', v?.synthesis, 'No synthesis yet: integrate the space.');
}

async function runConsolidate() {
  const b = $('consolidate-btn');
  b.disabled = true;
  b.textContent = 'Consolidating…';
  try {
    const v = await api.consolidate(state.space.id, state.sessionId);
    await loadMemory();
    if (v && typeof v.content === 'string') $('memory').textContent = v.content;
    toast('Memory consolidated');
  } catch (err) {
    showError(err, 'Consolidate');
  } finally {
    b.textContent = 'Consolidate now';
    b.disabled = !state.session;
  }
}

async function runIntegrate() {
  const b = $('integrate-btn');
  b.disabled = true;
  b.textContent = 'Integrating…';
  try {
    const v = await api.integrate(state.space.id);
    await loadMemory();
    toast(`Integrated: synthesis written, ${v.insights?.length ?? 0} insights pushed`);
  } catch (err) {
    showError(err, 'Integrate');
  } finally {
    b.textContent = 'Integrate space';
    b.disabled = !state.space;
  }
}

function selectTab(name) {
  for (const t of ['prompts', 'memory', 'space']) {
    const on = t === name;
    const tab = $(`tab-${t}`);
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  if (name === 'memory') loadMemory();
}

// ---------- helpers ----------

function fmtTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return '';
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function isTyping(el) {
  return el && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.isContentEditable);
}

// ---------- wiring ----------

function bind() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const k = $('key-input').value.trim();
    if (k) useKey(k);
  });
  $('key-dialog').addEventListener('cancel', (e) => {
    if (!state.key) e.preventDefault(); // nothing works without a key
  });
  $('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = '';
    state.spaces = [];
    clearSpace();
    askKey('');
  });
  $('new-space').addEventListener('submit', (e) => {
    e.preventDefault();
    const label = $('new-space-label').value.trim();
    if (label) createSpace(label);
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    sendTurn();
  });
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendTurn();
    } else if (e.key === 'Escape' && state.turns.has(state.sessionId)) {
      e.preventDefault();
      cancelTurn();
    }
  });
  $('cancel').addEventListener('click', cancelTurn);
  $('fork-btn').addEventListener('click', openFork);
  $('fork-form').addEventListener('submit', submitFork);
  $('fork-form').querySelector('[data-close]').addEventListener('click', () => $('fork-dialog').close());
  $('archive-btn').addEventListener('click', archiveSession);
  for (const f of document.querySelectorAll('form.slot')) {
    f.addEventListener('submit', saveSlot);
    f.querySelector('textarea').addEventListener('input', () => {
      f.querySelector('.slot-state').textContent = 'unsaved changes';
    });
  }
  $('space-form').addEventListener('submit', renameAndSaveSpace);
  $('delete-space').addEventListener('click', deleteSpace);
  $('consolidate-btn').addEventListener('click', runConsolidate);
  $('integrate-btn').addEventListener('click', runIntegrate);

  const tabs = ['prompts', 'memory', 'space'];
  for (const t of tabs) {
    const tab = $(`tab-${t}`);
    tab.addEventListener('click', () => selectTab(t));
    tab.addEventListener('keydown', (e) => {
      const i = tabs.indexOf(t);
      const j = e.key === 'ArrowRight' ? (i + 1) % 3 : e.key === 'ArrowLeft' ? (i + 2) % 3 : -1;
      if (j >= 0) {
        selectTab(tabs[j]);
        $(`tab-${tabs[j]}`).focus();
      }
    });
  }

  // Arrow keys move between sessions in the tree.
  $('tree').addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp' && e.key !== 'Home' && e.key !== 'End') return;
    const nodes = [...$('tree').querySelectorAll('button.node')];
    const i = nodes.indexOf(document.activeElement);
    let j = i;
    if (e.key === 'ArrowDown') j = Math.min(nodes.length - 1, i + 1);
    if (e.key === 'ArrowUp') j = Math.max(0, i - 1);
    if (e.key === 'Home') j = 0;
    if (e.key === 'End') j = nodes.length - 1;
    if (nodes[j]) {
      e.preventDefault();
      nodes[j].focus();
    }
  });

  // Shortcuts outside text fields: / focuses the composer, f forks.
  document.addEventListener('keydown', (e) => {
    if (isTyping(document.activeElement) || e.ctrlKey || e.metaKey || e.altKey || document.querySelector('dialog[open]')) return;
    if (e.key === '/' && !$('input').disabled) {
      e.preventDefault();
      $('input').focus();
    } else if (e.key === 'f' && !$('fork-btn').disabled) {
      e.preventDefault();
      openFork();
    }
  });
}

bind();
if (state.key) useKey(state.key);
else askKey('');
