package mockllm

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Reply generation for unscripted requests, plus the small text helpers the
// handler uses (token splitting, word counting, UUID scanning).

// filler pads generated replies to Config.ReplyTokens words.
var filler = [...]string{
	"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
	"india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
	"quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
	"yankee", "zulu", "lorem", "ipsum", "dolor", "sit", "amet", "consectetur",
}

// echoWords is how many words of the user's message a generated reply quotes.
const echoWords = 8

// isSpace reports ASCII whitespace. Non-ASCII bytes are never spaces, so
// splitting on isSpace never cuts a UTF-8 sequence.
func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v'
}

// countWords counts whitespace-separated words; it is the mock's token count.
func countWords(s string) int {
	n := 0
	in := false
	for i := 0; i < len(s); i++ {
		if isSpace(s[i]) {
			in = false
		} else if !in {
			in = true
			n++
		}
	}
	return n
}

// nextToken returns the end of the streaming token starting at pos: any
// leading whitespace plus the following word. Concatenating all tokens gives
// back s exactly.
func nextToken(s string, pos int) int {
	i := pos
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	for i < len(s) && !isSpace(s[i]) {
		i++
	}
	return i
}

// fnv64 is FNV-1a.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// splitmix64 is a tiny, good-quality mixing function used as a stateless PRNG.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// unitFloat maps a 64-bit value to [0, 1).
func unitFloat(x uint64) float64 {
	return float64(x>>11) / (1 << 53)
}

// generateText builds the deterministic reply to input: "Mock reply to:"
// followed by the first words of input (then "…" if it was longer), padded
// with filler words chosen from a hash of seed and input, exactly n words
// long (n ≥ 1).
func generateText(seed int64, input string, n int) string {
	if n < 1 {
		n = 1
	}
	var b strings.Builder
	b.Grow(n * 8)
	words := 0
	add := func(w string) {
		if words >= n {
			return
		}
		if words > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(w)
		words++
	}
	if countWords(input) == 0 {
		add("Mock")
		add("reply.")
	} else {
		add("Mock")
		add("reply")
		add("to:")
		pos, quoted := 0, 0
		for pos < len(input) && words < n {
			end := nextToken(input, pos)
			w := strings.TrimLeft(input[pos:end], " \t\r\n\f\v")
			pos = end
			if w == "" {
				continue
			}
			if quoted == echoWords {
				add("…")
				break
			}
			add(w)
			quoted++
		}
	}
	h := fnv64(input) ^ uint64(seed)
	for words < n {
		h = splitmix64(h)
		add(filler[h%uint64(len(filler))])
	}
	return b.String()
}

type jsonReply struct {
	Synthesis string        `json:"synthesis"`
	Insights  []jsonInsight `json:"insights"`
}

type jsonInsight struct {
	SessionID string `json:"sessionId"`
	Content   string `json:"content"`
}

// generateJSON answers JSON mode: a synthesis plus one insight per distinct
// UUID found in input, in order of first appearance.
func generateJSON(seed int64, input string) string {
	ids := findUUIDs(input)
	r := jsonReply{
		Synthesis: "Mock synthesis of " + strconv.Itoa(len(ids)) + " session(s): " + generateText(seed, input, 12),
		Insights:  make([]jsonInsight, 0, len(ids)),
	}
	for _, id := range ids {
		r.Insights = append(r.Insights, jsonInsight{
			SessionID: id,
			Content:   "Mock insight for session " + id + ".",
		})
	}
	out, err := json.Marshal(r)
	if err != nil { // cannot happen: only strings
		return `{"synthesis":"","insights":[]}`
	}
	return string(out)
}

func isHex(b byte) bool {
	return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F')
}

// isUUIDAt reports whether s[i:i+36] is a textual UUID (8-4-4-4-12 hex
// digits, any case).
func isUUIDAt(s string, i int) bool {
	if i+36 > len(s) {
		return false
	}
	for j := 0; j < 36; j++ {
		c := s[i+j]
		switch j {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !isHex(c) {
				return false
			}
		}
	}
	return true
}

// findUUIDs returns the distinct UUIDs (compared case-insensitively) in s,
// in order of first appearance, as written. A UUID glued to further hex
// digits or dashes is not matched.
func findUUIDs(s string) []string {
	var out []string
	for i := 0; i+36 <= len(s); i++ {
		if !isHex(s[i]) || (i > 0 && (isHex(s[i-1]) || s[i-1] == '-')) {
			continue
		}
		if !isUUIDAt(s, i) {
			continue
		}
		if e := i + 36; e < len(s) && (isHex(s[e]) || s[e] == '-') {
			continue
		}
		id := s[i : i+36]
		dup := false
		for _, o := range out {
			if strings.EqualFold(o, id) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, id)
		}
		i += 35
	}
	return out
}
