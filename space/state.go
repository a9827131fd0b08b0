package space

import (
	"sort"

	"github.com/stellohq/stello/session"
)

// node is one session as held by its space actor.
type node struct {
	meta     session.Meta
	data     session.Data
	children []string // ids ordered by index

	current *turnRun   // the turn running on this session
	queue   []*turnRun // turns waiting behind it, in arrival order

	// hist caches the session's history (summary and the records after
	// it) once a turn has run, so later turns read nothing from the
	// database before calling the model.
	hist *session.History
}

// SessionView is a copy of a session's metadata with its children's ids.
type SessionView struct {
	session.Meta
	Children []string
}

// TreeNode is one node of the session tree.
type TreeNode struct {
	Meta     session.Meta
	Children []*TreeNode
}

func (n *node) view() SessionView {
	return SessionView{Meta: n.meta, Children: append([]string{}, n.children...)}
}

// tree is the in-memory session tree of one space.
type tree struct {
	nodes map[string]*node
	root  *node
}

func newTree(states []session.State) *tree {
	t := &tree{nodes: make(map[string]*node, len(states))}
	for _, st := range states {
		t.nodes[st.Meta.ID] = &node{meta: st.Meta, data: st.Data}
	}
	for _, n := range t.nodes {
		if n.meta.ParentID == nil {
			if n.meta.Role == session.RoleMain {
				t.root = n
			}
			continue
		}
		if p, ok := t.nodes[*n.meta.ParentID]; ok {
			p.children = append(p.children, n.meta.ID)
		}
	}
	for _, n := range t.nodes {
		t.sortChildren(n)
	}
	return t
}

func (t *tree) sortChildren(n *node) {
	sort.SliceStable(n.children, func(i, j int) bool {
		return t.nodes[n.children[i]].meta.Index < t.nodes[n.children[j]].meta.Index
	})
}

func (t *tree) add(st session.State) *node {
	n := &node{meta: st.Meta, data: st.Data}
	t.nodes[st.Meta.ID] = n
	if st.Meta.ParentID != nil {
		if p, ok := t.nodes[*st.Meta.ParentID]; ok {
			p.children = append(p.children, st.Meta.ID)
			t.sortChildren(p)
		}
	}
	return n
}

func (t *tree) build(n *node) *TreeNode {
	out := &TreeNode{Meta: n.meta, Children: make([]*TreeNode, 0, len(n.children))}
	for _, id := range n.children {
		if c, ok := t.nodes[id]; ok {
			out.Children = append(out.Children, t.build(c))
		}
	}
	return out
}

// ancestors returns the ancestors of n, nearest first.
func (t *tree) ancestors(n *node) []*node {
	var out []*node
	for p := n.meta.ParentID; p != nil; {
		pn, ok := t.nodes[*p]
		if !ok {
			break
		}
		out = append(out, pn)
		p = pn.meta.ParentID
	}
	return out
}
