package session

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/stellohq/stello/llm"
)

// memoryAttempts bounds how often memory work is redone when the memory
// changed while the model was thinking.
const memoryAttempts = 3

// ConsolidateResult is a session's new memory.
type ConsolidateResult struct {
	Memory  *string
	Version int64
	// Changed is false when there was nothing new to consolidate.
	Changed bool
}

func pick(prompts ...*string) string {
	for _, p := range prompts {
		if p != nil && strings.TrimSpace(*p) != "" {
			return *p
		}
	}
	return ""
}

// Consolidate folds the session's records since its last consolidation into
// its memory, with the consolidate prompt (session's own, else the space's,
// else the space setup's, else the built-in one). The write covers exactly the records read and is
// redone if the memory changed meanwhile.
func (e *Engine) Consolidate(ctx context.Context, sp Space, st State) (ConsolidateResult, error) {
	prompt := pick(st.Data.ConsolidatePrompt, sp.ConsolidatePrompt,
		e.defaultPrompt(func(s *SpaceSetup) string { return s.ConsolidatePrompt }))
	if prompt == "" {
		prompt = DefaultConsolidatePrompt
	}
	for attempt := 0; attempt < memoryAttempts; attempt++ {
		ms, err := e.store.MemoryState(ctx, sp.ID, st.Meta.ID)
		if err != nil {
			return ConsolidateResult{}, err
		}
		recs, err := e.store.RecordsAfter(ctx, sp.ID, st.Meta.ID, ms.ConsolidatedThrough)
		if err != nil {
			return ConsolidateResult{}, err
		}
		if len(recs) == 0 {
			return ConsolidateResult{Memory: ms.Memory, Version: ms.Version}, nil
		}
		var b strings.Builder
		b.WriteString("Current memory:\n")
		if ms.Memory != nil && *ms.Memory != "" {
			b.WriteString(*ms.Memory)
		} else {
			b.WriteString("(empty)")
		}
		b.WriteString("\n\nNew messages:\n")
		writeTranscript(&b, recs)
		memory, err := e.complete(ctx, prompt, b.String(), llm.FormatText)
		if err != nil {
			return ConsolidateResult{}, err
		}
		v, ok, err := e.store.WriteConsolidation(ctx, sp.ID, st.Meta.ID, memory, ms.Version, recs[len(recs)-1].ID)
		if err != nil {
			return ConsolidateResult{}, err
		}
		if ok {
			return ConsolidateResult{Memory: &memory, Version: v, Changed: true}, nil
		}
	}
	return ConsolidateResult{}, fmt.Errorf("consolidate: memory kept changing during %d attempts: %w", memoryAttempts, ErrConflict)
}

// IntegrateResult is what integration wrote.
type IntegrateResult struct {
	Synthesis   string
	Insights    []Insight
	RootVersion int64
	// Written is false when there was no child to integrate.
	Written bool
}

// Integrate reads every active child's memory, asks the model for a
// synthesis and per-child insights, and writes the synthesis into the root
// and each insight into its child in one transaction. Insights for unknown
// sessions are ignored.
func (e *Engine) Integrate(ctx context.Context, sp Space, root State) (IntegrateResult, error) {
	prompt := pick(root.Data.IntegratePrompt, sp.IntegratePrompt,
		e.defaultPrompt(func(s *SpaceSetup) string { return s.IntegratePrompt }))
	if prompt == "" {
		prompt = DefaultIntegratePrompt
	}
	for attempt := 0; attempt < memoryAttempts; attempt++ {
		rs, err := e.store.MemoryState(ctx, sp.ID, root.Meta.ID)
		if err != nil {
			return IntegrateResult{}, err
		}
		kids, err := e.store.ChildMemories(ctx, sp.ID)
		if err != nil {
			return IntegrateResult{}, err
		}
		known := map[string]bool{}
		var b strings.Builder
		for _, k := range kids {
			if k.Memory == nil || strings.TrimSpace(*k.Memory) == "" {
				continue
			}
			known[k.ID] = true
			fmt.Fprintf(&b, "## Session %s (label: %s)\n%s\n\n", k.ID, k.Label, *k.Memory)
		}
		if len(known) == 0 {
			syn := ""
			if rs.Memory != nil {
				syn = *rs.Memory
			}
			return IntegrateResult{Synthesis: syn, Insights: []Insight{}, RootVersion: rs.Version}, nil
		}
		if rs.Memory != nil && *rs.Memory != "" {
			b.WriteString("## Previous synthesis\n" + *rs.Memory + "\n")
		}
		out, err := e.complete(ctx, prompt, b.String(), llm.FormatJSON)
		if err != nil {
			return IntegrateResult{}, err
		}
		syn, ins, err := ParseIntegration(out, known)
		if err != nil {
			return IntegrateResult{}, err
		}
		v, _, ok, err := e.store.WriteIntegration(ctx, sp.ID, root.Meta.ID, syn, rs.Version, ins)
		if err != nil {
			return IntegrateResult{}, err
		}
		if ok {
			return IntegrateResult{Synthesis: syn, Insights: ins, RootVersion: v, Written: true}, nil
		}
	}
	return IntegrateResult{}, fmt.Errorf("integrate: root memory kept changing during %d attempts: %w", memoryAttempts, ErrConflict)
}

// ErrBadModelOutput means the model's answer could not be used.
var ErrBadModelOutput = fmt.Errorf("%w: unusable model output", llm.ErrProvider)

// ParseIntegration extracts {"synthesis", "insights"} from model output,
// tolerating prose or a code fence around it, and keeps only insights for
// sessions in known (one per session, the last wins).
func ParseIntegration(out string, known map[string]bool) (string, []Insight, error) {
	obj, ok := llm.ExtractJSONObject(out)
	if !ok {
		return "", nil, fmt.Errorf("integration: no JSON object in the model's answer: %w", ErrBadModelOutput)
	}
	var v struct {
		Synthesis *string `json:"synthesis"`
		Insights  []struct {
			SessionID string `json:"sessionId"`
			Content   string `json:"content"`
		} `json:"insights"`
	}
	if err := json.Unmarshal([]byte(obj), &v); err != nil {
		return "", nil, fmt.Errorf("integration: %v: %w", err, ErrBadModelOutput)
	}
	if v.Synthesis == nil {
		return "", nil, fmt.Errorf("integration: the model's JSON has no \"synthesis\": %w", ErrBadModelOutput)
	}
	idx := map[string]int{}
	ins := []Insight{}
	for _, in := range v.Insights {
		id := strings.ToLower(strings.TrimSpace(in.SessionID))
		if !known[id] || strings.TrimSpace(in.Content) == "" {
			continue
		}
		if i, ok := idx[id]; ok {
			ins[i].Content = in.Content
			continue
		}
		idx[id] = len(ins)
		ins = append(ins, Insight{SessionID: id, Content: in.Content})
	}
	return *v.Synthesis, ins, nil
}
