package llm

import (
	"encoding/json"
	"strings"
)

const (
	thinkOpen  = "<think>"
	thinkClose = "</think>"
)

// StripThink removes the <think>…</think> reasoning blocks some models (e.g.
// DeepSeek-R1, Qwen3) put in their visible output and trims surrounding
// whitespace. Blocks may span several lines and occur several times. An
// unclosed <think> removes everything after it (the model was cut off while
// reasoning). A closing </think> with no opening tag before it (chat templates
// that put the opening tag in the prompt) removes everything up to and
// including it.
func StripThink(s string) string {
	if !strings.Contains(s, thinkOpen) && !strings.Contains(s, thinkClose) {
		return strings.TrimSpace(s)
	}

	// Orphan closing tag: the reasoning started before the output did.
	if closeAt := strings.Index(s, thinkClose); closeAt >= 0 {
		if openAt := strings.Index(s, thinkOpen); openAt < 0 || openAt > closeAt {
			s = s[closeAt+len(thinkClose):]
		}
	}

	var b strings.Builder
	b.Grow(len(s))
	for {
		openAt := strings.Index(s, thinkOpen)
		if openAt < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:openAt])
		rest := s[openAt+len(thinkOpen):]
		closeAt := strings.Index(rest, thinkClose)
		if closeAt < 0 {
			break // unclosed block: drop the rest
		}
		s = rest[closeAt+len(thinkClose):]
	}
	return strings.TrimSpace(b.String())
}

// ExtractJSONObject finds a JSON object in model output that may surround it
// with prose, <think> blocks or a Markdown code fence (```json … ```). It
// returns the object's text and true, or "" and false when the output holds
// no valid JSON object. Objects inside code fences are preferred; otherwise
// the first '{' that starts a balanced, valid JSON object wins.
func ExtractJSONObject(s string) (string, bool) {
	s = StripThink(s)
	for _, block := range fencedBlocks(s) {
		if obj, ok := firstJSONObject(block); ok {
			return obj, true
		}
	}
	return firstJSONObject(s)
}

// fencedBlocks returns the contents of the Markdown code fences in s, in
// order, without the info string (e.g. "json") after the opening fence.
func fencedBlocks(s string) []string {
	const fence = "```"
	var blocks []string
	for {
		start := strings.Index(s, fence)
		if start < 0 {
			return blocks
		}
		body := s[start+len(fence):]
		// Skip the info string up to the end of the line, unless the object
		// starts on the fence line itself (```{"a":1}```).
		if nl := strings.IndexByte(body, '\n'); nl >= 0 && !strings.Contains(body[:nl], "{") {
			body = body[nl+1:]
		}
		end := strings.Index(body, fence)
		if end < 0 {
			return append(blocks, body) // unterminated fence: take the rest
		}
		blocks = append(blocks, body[:end])
		s = body[end+len(fence):]
	}
}

// firstJSONObject returns the first balanced substring of s starting with '{'
// that is valid JSON.
func firstJSONObject(s string) (string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] != '{' {
			continue
		}
		end := balancedEnd(s[i:])
		if end < 0 {
			continue
		}
		candidate := s[i : i+end]
		if json.Valid([]byte(candidate)) {
			return candidate, true
		}
	}
	return "", false
}

// balancedEnd returns the length of the balanced {…} prefix of s (which
// starts with '{'), honoring JSON strings and escapes, or -1 when the braces
// never balance.
func balancedEnd(s string) int {
	depth := 0
	inString := false
	escaped := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				if c != '}' {
					return -1
				}
				return i + 1
			}
			if depth < 0 {
				return -1
			}
		}
	}
	return -1
}
