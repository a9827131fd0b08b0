package transport

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// checkJSONText walks a JSON value and refuses, naming the field, text that
// encoding/json would otherwise accept by changing it: invalid UTF-8 and
// lone surrogate escapes (both silently become U+FFFD) and the NUL
// character (which PostgreSQL text cannot hold). Keys are checked too.
// path is the field's name in API terms ("" for the body itself).
func checkJSONText(path string, raw json.RawMessage) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil
	}
	switch raw[0] {
	case '{':
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return nil // malformed JSON is reported by the decoder
		}
		for k, v := range obj {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if msg := badText([]byte(k)); msg != "" {
				return badField(displayPath(path, "(a key)"), msg)
			}
			if err := checkJSONText(p, v); err != nil {
				return err
			}
		}
	case '[':
		var arr []json.RawMessage
		if json.Unmarshal(raw, &arr) != nil {
			return nil
		}
		for i, v := range arr {
			if err := checkJSONText(path+"["+strconv.Itoa(i)+"]", v); err != nil {
				return err
			}
		}
	case '"':
		if msg := badText(raw); msg != "" {
			return badField(displayPath(path, "body"), msg)
		}
	}
	return nil
}

func displayPath(path, dflt string) string {
	if path == "" {
		return dflt
	}
	return path
}

// badText inspects an encoded JSON string (quotes included or not) and
// says what is wrong with it, or "".
func badText(s []byte) string {
	if !utf8.Valid(s) {
		return "must be valid UTF-8"
	}
	for i := 0; i < len(s); i++ {
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
