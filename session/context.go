package session

import (
	"context"
	"fmt"
	"strings"

	"github.com/stellohq/stello/llm"
)

// EstimateTokens is a rough token count: about four characters a token,
// plus a few tokens of framing per message.
func EstimateTokens(m llm.Message) int {
	n := len(m.Content)/4 + 4
	for _, c := range m.ToolCalls {
		n += (len(c.Name)+len(c.Input))/4 + 4
	}
	return n
}

func estimateAll(ms []llm.Message) int {
	n := 0
	for _, m := range ms {
		n += EstimateTokens(m)
	}
	return n
}

// assemble builds the messages of a turn in the documented order: system
// prompt, scope, memory, pending insight, history within the budget (older
// history replaced by a cached summary), then the new input. It returns the
// history as it stands after any summarisation, with its wire encoding, and
// the index of the history's first message in the messages.
func (e *Engine) assemble(ctx context.Context, req TurnRequest, hist *History) ([]llm.Message, *History, int, error) {
	var headRoom [viewPrefix]llm.Message
	head := headRoom[:0]
	d := req.Session.Data
	sys := d.SystemPrompt
	if sys == nil || *sys == "" {
		sys = e.defaultPrompt(func(s *SpaceSetup) string { return s.SystemPrompt })
	}
	if sys != nil && *sys != "" {
		head = append(head, llm.Message{Role: llm.RoleSystem, Content: *sys})
	}
	if s := req.Session.Meta.Scope; s != nil && *s != "" {
		head = append(head, llm.Message{Role: llm.RoleSystem, Content: "Scope of this session: " + *s})
	}
	if d.Memory != nil && *d.Memory != "" {
		head = append(head, llm.Message{Role: llm.RoleSystem, Content: "Memory of this session so far:\n" + *d.Memory})
	}
	if d.Insight != nil && *d.Insight != "" {
		head = append(head, llm.Message{Role: llm.RoleSystem, Content: "Insight from the coordinating session (consider it in this reply):\n" + *d.Insight})
	}
	input := llm.Message{Role: llm.RoleUser, Content: req.Input}

	hist = hist.prepare()
	summary := hist.Summary
	budget := e.opts.MaxContextTokens
	fixed := estimateAll(head) + EstimateTokens(input) + e.opts.MaxTokens
	total := fixed + hist.tokens
	if summary != nil {
		total += len(*summary)/4 + 4
	}
	if total > budget*8/10 && len(hist.clean) > 1 {
		// Keep the newest whole turns within half of what is left and fold
		// the rest into the summary.
		keepBudget := (budget - fixed) / 2
		cut := splitPoint(hist.clean, keepBudget)
		if cut > 0 {
			older := hist.clean[:cut]
			s, err := e.summarise(ctx, summary, older)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("summarise older history: %w", err)
			}
			through := older[len(older)-1].ID
			if err := e.store.SaveSummary(ctx, req.Space.ID, req.Session.Meta.ID, s, through); err != nil {
				return nil, nil, 0, err
			}
			summary = &s
			hist = (&History{Summary: summary, SummaryThrough: through, Records: append([]Record(nil), hist.clean[cut:]...)}).prepare()
		}
	}
	if summary != nil && *summary != "" {
		head = append(head, llm.Message{Role: llm.RoleSystem, Content: "Summary of the earlier conversation:\n" + *summary})
	}
	// The head goes in the room in front of the view (a prepared history
	// always has one, and a head has at most viewPrefix messages): the
	// history is not copied. The input goes after it, past the view's
	// length.
	at := len(head)
	start := viewPrefix - at
	copy(hist.room[start:viewPrefix], head)
	out := hist.room[start : viewPrefix+len(hist.msgs)]
	return append(out, input), e.encoded(hist), at, nil
}

// viewPrefix is the room a history's view keeps in front of its messages
// for a turn's head (system prompt, scope, memory, insight, summary: five
// at most). A session's turns run one at a time, so one turn at a time
// writes there, and after the view's length; older views of the same room
// are shorter and never see those writes.
const viewPrefix = 5

// newView lays msgs out after the room for a head, with spare capacity for
// the turns to come.
func newView(msgs []llm.Message) (room, view []llm.Message) {
	room = make([]llm.Message, viewPrefix+len(msgs), viewPrefix+len(msgs)+len(msgs)/2+16)
	copy(room[viewPrefix:], msgs)
	return room, room[viewPrefix:]
}

// appendView returns the view msgs (in room) followed by more: in room
// when it has the capacity, written past msgs' length only, else in a new
// room with twice the space, so a session's history is copied a
// logarithmic number of times as it grows, not once per turn.
func appendView(room, msgs, more []llm.Message) (newRoom, view []llm.Message) {
	n := viewPrefix + len(msgs)
	if n+len(more) > cap(room) {
		grown := make([]llm.Message, n, 2*(n+len(more))+16)
		copy(grown, room[:n])
		room = grown
	}
	room = append(room[:n], more...)
	return room, room[viewPrefix:]
}

// encoded returns hist with its wire encoding, encoding the model view
// once when it has none (a history just loaded, sanitised or summarised).
// The caller's history is not modified.
func (e *Engine) encoded(hist *History) *History {
	if e.enc == nil || hist.wire != nil {
		return hist
	}
	w, err := e.enc.EncodeHistory(nil, hist.msgs)
	if err != nil {
		return hist // the provider encodes the messages itself
	}
	h := *hist
	h.wire = w
	return &h
}

// prepare returns the history with its model view computed: the records
// with unpaired tool calls and results removed, their messages and their
// token estimate. A history returned by Turn is already prepared, so a turn
// on a cached history does not walk it again.
func (h *History) prepare() *History {
	if h.ready {
		return h
	}
	clean := sanitize(h.Records)
	room, msgs := newView(toMessages(clean))
	return &History{Summary: h.Summary, SummaryThrough: h.SummaryThrough, Records: h.Records,
		clean: clean, msgs: msgs, room: room, tokens: estimateAll(msgs), ready: true}
}

// withTurn returns the history followed by a committed turn's records (a
// complete tool-call group each, so nothing to sanitise), its wire encoding
// extended by them when enc is set. The appends write past the receiver's
// lengths only, so the receiver is unchanged.
func (h *History) withTurn(recs []Record, enc llm.HistoryEncoder) *History {
	h = h.prepare()
	msgs := toMessages(recs)
	var wire *llm.Encoded
	if enc != nil && h.wire != nil && h.wire.Messages == len(h.msgs) {
		// On failure the next turn encodes the whole view again.
		wire, _ = enc.EncodeHistory(h.wire, msgs)
	}
	room, view := appendView(h.room, h.msgs, msgs)
	return &History{Summary: h.Summary, SummaryThrough: h.SummaryThrough, Records: append(h.Records, recs...),
		clean: append(h.clean, recs...), msgs: view, room: room, tokens: h.tokens + estimateAll(msgs), ready: true,
		wire: wire}
}

func toMessages(recs []Record) []llm.Message {
	out := make([]llm.Message, len(recs))
	for i, r := range recs {
		out[i] = r.Message()
	}
	return out
}

// splitPoint returns the index of the first record to keep: the oldest user
// record such that everything from it fits keep tokens. Cutting only before a
// user record never splits a tool-call group. 0 means nothing can be cut.
func splitPoint(h []Record, keep int) int {
	used := 0
	cut := len(h)
	for i := len(h) - 1; i >= 0; i-- {
		used += EstimateTokens(h[i].Message())
		if used > keep {
			break
		}
		if h[i].Role == llm.RoleUser {
			cut = i
		}
	}
	if cut == len(h) {
		// Not even the newest turn fits: keep only from the last user record.
		for i := len(h) - 1; i > 0; i-- {
			if h[i].Role == llm.RoleUser {
				return i
			}
		}
		return 0
	}
	return cut
}

// sanitize drops tool calls without results and results without calls, so
// a provider never receives an unpaired tool call.
func sanitize(recs []Record) []Record {
	out := make([]Record, 0, len(recs))
	for i := 0; i < len(recs); i++ {
		r := recs[i]
		switch {
		case r.Role == llm.RoleAssistant && len(r.ToolCalls) > 0:
			want := map[string]bool{}
			for _, c := range r.ToolCalls {
				want[c.ID] = true
			}
			j := i + 1
			for j < len(recs) && recs[j].Role == llm.RoleTool && want[recs[j].ToolCallID] {
				delete(want, recs[j].ToolCallID)
				j++
			}
			if len(want) == 0 {
				out = append(out, recs[i:j]...)
			} else if r.Content != "" {
				out = append(out, Record{ID: r.ID, Role: llm.RoleAssistant, Content: r.Content, CreatedAt: r.CreatedAt})
			}
			i = j - 1
		case r.Role == llm.RoleTool:
			// A result whose call is not right before it: drop.
		default:
			out = append(out, r)
		}
	}
	return out
}

func (e *Engine) summarise(ctx context.Context, previous *string, older []Record) (string, error) {
	var b strings.Builder
	if previous != nil && *previous != "" {
		b.WriteString("Previous summary:\n")
		b.WriteString(*previous)
		b.WriteString("\n\n")
	}
	b.WriteString("Conversation to summarise:\n")
	writeTranscript(&b, older)
	return e.complete(ctx, DefaultSummaryPrompt, b.String(), llm.FormatText)
}

func writeTranscript(b *strings.Builder, recs []Record) {
	for _, r := range recs {
		switch {
		case r.Role == llm.RoleTool:
			fmt.Fprintf(b, "[tool result] %s\n", r.Content)
		case len(r.ToolCalls) > 0:
			for _, c := range r.ToolCalls {
				fmt.Fprintf(b, "[assistant called %s] %s\n", c.Name, string(c.Input))
			}
			if r.Content != "" {
				fmt.Fprintf(b, "%s: %s\n", r.Role, r.Content)
			}
		default:
			fmt.Fprintf(b, "%s: %s\n", r.Role, r.Content)
		}
	}
}
