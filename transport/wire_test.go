package transport

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chunks that stress JSON string encoding: quotes, escapes, control
// characters, HTML, multi-byte text, U+2028, invalid UTF-8.
var hardChunks = []string{
	"", "plain", `say "hi" \ there`, "tab\tnew\nline\rcr\x00\x1f", "<a href='x'>&amp;</a>",
	"héllo 世界 🌍", "line\u2028sep\u2029para", "bad \xff\xfe utf8", strings.Repeat("long ", 300),
}

// The hand-written stream.delta encoding reads back, through encoding/json,
// as exactly what the reflective encoding of wsOut said.
func TestDeltaMessageMatchesTheReflectiveEncoding(t *testing.T) {
	ids := []json.RawMessage{nil, json.RawMessage(`null`), json.RawMessage(`7`), json.RawMessage(`"abc"`),
		json.RawMessage(`{"a": [1, 2]}`), json.RawMessage("\"x y\"")}
	for _, id := range ids {
		for i, chunk := range hardChunks {
			d := &pendingDelta{id: id, turnID: "0193a0b4-8d8c-7c6e-9d3e-6f1d2c3b4a59", offset: 1000 + i, chunk: []byte(chunk)}
			got := appendDelta([]byte("junk before"), d)[len("junk before"):]
			require.True(t, json.Valid(got), "valid JSON for id %s chunk %q: %s", id, chunk, got)

			o := out("stream.delta", id)
			c := chunk
			off := d.offset
			o.Chunk, o.Offset, o.TurnID = &c, &off, d.turnID
			want, err := json.Marshal(o)
			require.NoError(t, err)

			var g, w map[string]any
			require.NoError(t, json.Unmarshal(got, &g))
			require.NoError(t, json.Unmarshal(want, &w))
			assert.Equal(t, w, g, "id %s chunk %q", id, chunk)
		}
	}
}

// An SSE delta event parses back to its offset and chunk.
func TestDeltaEventEncoding(t *testing.T) {
	for i, chunk := range hardChunks {
		ev := appendDeltaEvent(nil, 42+i, []byte(chunk))
		sc := bufio.NewScanner(bytes.NewReader(ev))
		sc.Buffer(nil, 1<<20)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		require.Len(t, lines, 4, "%q", ev)
		assert.Equal(t, "id: "+strconv.Itoa(42+i), lines[0])
		assert.Equal(t, "event: delta", lines[1])
		assert.Equal(t, "", lines[3])
		var data struct{ Chunk *string }
		require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(lines[2], "data: ")), &data))
		require.NotNil(t, data.Chunk)
		want, _ := json.Marshal(chunk) // invalid UTF-8 becomes U+FFFD, as encoding/json does
		var w string
		require.NoError(t, json.Unmarshal(want, &w))
		assert.Equal(t, w, *data.Chunk)
	}
}

// Chunks pushed while the writer is busy come out as one event with the
// last offset; an overflow drops the client.
func TestDeltaBufferCoalescesAndBounds(t *testing.T) {
	d := newDeltaBuffer(10)
	out, _, ok := d.drain(nil)
	require.True(t, ok)
	assert.Empty(t, out, "nothing waiting, nothing written")
	d.push("ab", 2)
	d.push("cd", 4)
	out, off, ok := d.drain(nil)
	require.True(t, ok)
	assert.Equal(t, 4, off)
	assert.Equal(t, string(appendDeltaEvent(nil, 4, []byte("abcd"))), string(out))
	d.push("0123456789x", 15)
	out, off, ok = d.drain(nil)
	require.True(t, ok, "one chunk into an empty buffer is taken whatever its size (a resume's catch-up)")
	assert.Equal(t, 15, off)
	assert.Equal(t, string(appendDeltaEvent(nil, 15, []byte("0123456789x"))), string(out))
	d.push("0123", 19)
	d.push("456789x", 26)
	_, _, ok = d.drain(nil)
	assert.False(t, ok, "waiting text and a chunk over max bytes: the client is too slow")
	d.push("a", 27)
	_, _, ok = d.drain(nil)
	assert.False(t, ok, "an overflow is final")
}

// The write deadline is renewed at most once per tenth of the timeout (at
// least once a second), and always leaves a write at least the timeout.
func TestWriteDeadlineRenewal(t *testing.T) {
	for _, tc := range []struct{ timeout, period time.Duration }{
		{200 * time.Millisecond, 20 * time.Millisecond},
		{30 * time.Second, time.Second},
	} {
		var renewAt time.Time
		var sets []time.Time
		set := func(d time.Time) error { sets = append(sets, d); return nil }
		start := time.Now()
		renewWriteDeadline(&renewAt, start, tc.timeout, set)
		require.Len(t, sets, 1)
		assert.Equal(t, start.Add(tc.timeout+tc.period), sets[0])
		for i := 0; i < 100; i++ {
			renewWriteDeadline(&renewAt, start.Add(tc.period*time.Duration(i)/100), tc.timeout, set)
		}
		assert.Len(t, sets, 1, "no renewal within the period (timeout %v)", tc.timeout)
		later := start.Add(tc.period)
		renewWriteDeadline(&renewAt, later, tc.timeout, set)
		require.Len(t, sets, 2, "renewed once the period has passed (timeout %v)", tc.timeout)
		assert.False(t, sets[1].Before(later.Add(tc.timeout)), "a write started now has the whole timeout")
	}
}
