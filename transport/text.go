package transport

import (
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxJSONDepth bounds how deeply a body or message may nest.
const maxJSONDepth = 64

// checkJSONText scans a syntactically valid JSON document once and refuses,
// naming the field, text that encoding/json would otherwise accept by
// changing it: invalid UTF-8 and lone surrogate escapes (both silently
// become U+FFFD) and the NUL character (which PostgreSQL text cannot hold),
// in keys and values alike; and nesting deeper than maxJSONDepth. Only the
// top-level fields in known are checked (nil: all): unknown fields are
// ignored, as everywhere else.
func checkJSONText(b []byte, known map[string]bool) error {
	type frame struct {
		obj       bool
		expectKey bool
		key       string
		idx       int
	}
	var stack []frame
	path := func() string {
		var sb strings.Builder
		for i, f := range stack {
			switch {
			case f.obj:
				if i > 0 {
					sb.WriteByte('.')
				}
				sb.WriteString(f.key)
			default:
				sb.WriteString("[" + strconv.Itoa(f.idx) + "]")
			}
		}
		if sb.Len() == 0 {
			return "body"
		}
		return sb.String()
	}
	skipped := func() bool {
		return known != nil && len(stack) > 0 && stack[0].obj && !stack[0].expectKey && !known[stack[0].key]
	}
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return badField(path(), "is nested too deeply (at most "+strconv.Itoa(maxJSONDepth)+" levels)")
			}
			stack = append(stack, frame{obj: c == '{', expectKey: c == '{'})
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case ',':
			if n := len(stack); n > 0 {
				if stack[n-1].obj {
					stack[n-1].expectKey = true
				} else {
					stack[n-1].idx++
				}
			}
		case ':':
			if n := len(stack); n > 0 {
				stack[n-1].expectKey = false
			}
		case '"':
			j := i + 1
			for j < len(b) && b[j] != '"' {
				if b[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(b) {
				return nil // unterminated: the decoder reports it
			}
			raw := b[i+1 : j]
			n := len(stack)
			if n > 0 && stack[n-1].obj && stack[n-1].expectKey {
				if msg := badText(raw); msg != "" && (known == nil || (n > 1 && !skipped())) {
					return badField(path()+" (a key)", msg)
				}
				key := string(raw)
				if uq, err := strconv.Unquote(`"` + key + `"`); err == nil {
					key = uq
				}
				stack[n-1].key = key
			} else if !skipped() {
				if msg := badText(raw); msg != "" {
					return badField(path(), msg)
				}
			}
			i = j
		}
	}
	return nil
}

// jsonFields returns the JSON field names of the struct v points to, or
// nil (check everything) for anything else.
func jsonFields(v any) map[string]bool {
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil
	}
	t = t.Elem()
	out := make(map[string]bool, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = true
	}
	return out
}

// badText inspects the inside of an encoded JSON string and says what is
// wrong with it, or "".
func badText(s []byte) string {
	if !utf8.Valid(s) {
		return "must be valid UTF-8"
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return "must not contain the NUL character (\\u0000)"
		}
		if s[i] != '\\' || i+1 >= len(s) {
			continue
		}
		if s[i+1] != 'u' || i+5 >= len(s) {
			i++ // skip the escaped character
			continue
		}
		v, err := strconv.ParseUint(string(s[i+2:i+6]), 16, 32)
		if err != nil {
			return ""
		}
		switch {
		case v == 0:
			return "must not contain the NUL character (\\u0000)"
		case v >= 0xD800 && v < 0xDC00: // high surrogate: a low one must follow
			if i+11 < len(s) && s[i+6] == '\\' && s[i+7] == 'u' {
				if lo, err := strconv.ParseUint(string(s[i+8:i+12]), 16, 32); err == nil && lo >= 0xDC00 && lo < 0xE000 {
					i += 11
					continue
				}
			}
			return "must be valid UTF-8 (it contains a lone surrogate escape)"
		case v >= 0xDC00 && v < 0xE000:
			return "must be valid UTF-8 (it contains a lone surrogate escape)"
		}
		i += 5
	}
	return ""
}
