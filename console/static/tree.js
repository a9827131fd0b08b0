// The session tree: state kept as the API's SessionTreeNode, patched by space events.

/** Finds the node with id in the tree rooted at node. */
export function findNode(node, id) {
  if (!node) return null;
  if (node.id === id) return node;
  for (const c of node.children || []) {
    const f = findNode(c, id);
    if (f) return f;
  }
  return null;
}

/**
 * Applies a space event to the tree. Returns true when the tree changed,
 * false when it did not need to, and null when it cannot be applied
 * locally (the caller refetches the tree).
 */
export function applyEvent(root, ev) {
  if (!root) return null;
  const meta = ev.session;
  switch (ev.event) {
    case 'session.created': {
      if (!meta) return null;
      if (findNode(root, meta.id)) return mergeMeta(findNode(root, meta.id), meta);
      const parent = findNode(root, meta.parentId);
      if (!parent) return null;
      const node = {
        id: meta.id, label: meta.label, role: meta.role, status: meta.status,
        turnCount: meta.turnCount || 0, sourceSessionId: meta.sourceSessionId ?? null, children: [],
        index: meta.index,
      };
      parent.children = parent.children || [];
      let at = parent.children.length;
      if (Number.isInteger(meta.index)) {
        const i = parent.children.findIndex((c) => Number.isInteger(c.index) && c.index > meta.index);
        if (i >= 0) at = i;
      }
      parent.children.splice(at, 0, node);
      return true;
    }
    case 'session.archived': {
      const n = findNode(root, ev.sessionId);
      if (!n) return null;
      if (meta) mergeMeta(n, meta);
      n.status = 'archived';
      return true;
    }
    case 'session.updated':
    case 'turn.committed': {
      const n = findNode(root, ev.sessionId);
      if (!n) return null;
      if (!meta) return ev.event === 'turn.committed' ? (n.turnCount++, true) : null;
      return mergeMeta(n, meta);
    }
    default:
      return false;
  }
}

function mergeMeta(n, meta) {
  let changed = false;
  for (const k of ['label', 'status', 'turnCount', 'role']) {
    if (meta[k] !== undefined && n[k] !== meta[k]) {
      n[k] = meta[k];
      changed = true;
    }
  }
  return changed;
}

/**
 * Renders the tree into el as nested lists of tree items. onSelect(id) is
 * called when a session is chosen.
 */
export function renderTree(el, root, currentId, onSelect) {
  const hadFocus = el.contains(document.activeElement) ? document.activeElement.dataset.id : null;
  el.replaceChildren();
  if (!root) return;
  const ul = document.createElement('ul');
  ul.className = 'tree-level';
  ul.append(item(root, 1));
  el.append(ul);
  if (hadFocus) el.querySelector(`button[data-id="${CSS.escape(hadFocus)}"]`)?.focus();

  function item(node, level) {
    const li = document.createElement('li');
    li.setAttribute('role', 'treeitem');
    li.setAttribute('aria-level', String(level));
    li.className = 'tree-item';
    li.dataset.id = node.id;
    li.dataset.status = node.status;
    const kids = node.children || [];
    if (kids.length) li.setAttribute('aria-expanded', 'true');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'node';
    b.dataset.id = node.id;
    b.dataset.status = node.status;
    if (node.id === currentId) {
      b.setAttribute('aria-current', 'true');
      li.setAttribute('aria-selected', 'true');
    }
    const label = document.createElement('span');
    label.className = 'node-label';
    label.textContent = node.label;
    b.append(label);
    if (node.role === 'main') b.append(tag('root', 'tag tag-root'));
    if (node.status === 'archived') b.append(tag('archived', 'tag tag-archived'));
    const count = tag(String(node.turnCount ?? 0), 'count');
    count.title = `${node.turnCount ?? 0} turns`;
    b.append(count);
    b.title = `${node.label} · ${node.status} · ${node.turnCount ?? 0} turns`;
    b.addEventListener('click', () => onSelect(node.id));
    li.append(b);
    if (kids.length) {
      const sub = document.createElement('ul');
      sub.setAttribute('role', 'group');
      sub.className = 'tree-level';
      for (const c of kids) sub.append(item(c, level + 1));
      li.append(sub);
    }
    return li;
  }
}

function tag(text, cls) {
  const s = document.createElement('span');
  s.className = cls;
  s.textContent = text;
  return s;
}
