package session

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/fake"
)

func turnRecords(i int) []Record {
	return []Record{{Role: llm.RoleUser, Content: fmt.Sprintf("question %d", i)},
		{Role: llm.RoleAssistant, Content: fmt.Sprintf("answer %d", i)}}
}

// A history grown turn by turn keeps every earlier version intact (a
// turn's appends land past their lengths), and its view is copied a
// logarithmic number of times, not once per turn.
func TestHistoryViewGrowsWithoutTouchingEarlierVersions(t *testing.T) {
	h := (&History{}).prepare()
	versions := []*History{h}
	copies := 0
	for i := range 500 {
		next := h.withTurn(turnRecords(i), nil)
		if &next.room[0] != &h.room[0] {
			copies++
		}
		h = next
		versions = append(versions, h)
	}
	assert.LessOrEqual(t, copies, 10, "view copied %d times in 500 turns", copies)
	for n, v := range versions {
		require.Len(t, v.msgs, 2*n)
		for i := range n {
			assert.Equal(t, fmt.Sprintf("question %d", i), v.msgs[2*i].Content)
			assert.Equal(t, fmt.Sprintf("answer %d", i), v.msgs[2*i+1].Content)
		}
	}
}

// A turn's messages are its head, the history's view and the input, in
// that order, and assembling them costs the same at 400 turns of history
// as at 10: the history is not copied per turn.
func TestAssembleDoesNotCopyTheHistory(t *testing.T) {
	e := NewEngine(nil, fake.New(fake.Config{}), nil, Options{MaxContextTokens: 1 << 30})
	mem, insight := "likes tea", "ask about tea"
	sys := "be brief"
	req := TurnRequest{Session: State{Data: Data{SystemPrompt: &sys, Memory: &mem, Insight: &insight}}, Input: "hello"}
	grow := func(turns int) *History {
		h := (&History{}).prepare()
		for i := range turns {
			h = h.withTurn(turnRecords(i), nil)
		}
		return h
	}
	short, long := grow(10), grow(400)
	msgs, _, at, err := e.assemble(context.Background(), req, long)
	require.NoError(t, err)
	require.Equal(t, 3, at)
	require.Len(t, msgs, 3+800+1)
	assert.Equal(t, sys, msgs[0].Content)
	assert.Equal(t, "Memory of this session so far:\n"+mem, msgs[1].Content)
	assert.Contains(t, msgs[2].Content, insight)
	assert.Equal(t, "question 0", msgs[3].Content)
	assert.Equal(t, "answer 399", msgs[802].Content)
	assert.Equal(t, llm.Message{Role: llm.RoleUser, Content: "hello"}, msgs[803])

	allocs := func(h *History) float64 {
		return testing.AllocsPerRun(100, func() {
			if _, _, _, err := e.assemble(context.Background(), req, h); err != nil {
				t.Fatal(err)
			}
		})
	}
	a10, a400 := allocs(short), allocs(long)
	assert.Equal(t, a10, a400, "allocations at 10 turns %v, at 400 %v", a10, a400)
	bytes := func(h *History) int64 {
		r := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				_, _, _, _ = e.assemble(context.Background(), req, h)
			}
		})
		return r.AllocedBytesPerOp()
	}
	assert.Less(t, bytes(long), int64(4<<10), "no allocation the size of the history")
}
