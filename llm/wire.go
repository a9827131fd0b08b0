package llm

import (
	"unicode/utf8"
)

// Encoded is a prefix of a conversation in one provider's wire format,
// built once and extended by appending, so that a request body is the
// fixed parts, these bytes and the new messages, and unchanged messages
// are never encoded again.
//
// An Encoded is never modified: EncodeHistory returns a new value that may
// share its arrays with the one it extends (it writes past their lengths
// only), like appending to a slice. A value must therefore be extended at
// most once, as a session's history is, one committed turn at a time.
type Encoded struct {
	// Provider names the encoder that built it; a client ignores an
	// encoding of another provider.
	Provider string
	// Messages is how many Messages are encoded.
	Messages int
	// Closed holds the complete wire messages, each followed by a comma.
	Closed []byte
	// OpenRole and Open hold the last wire message while it may still grow
	// (Anthropic joins consecutive messages of one role into one): its
	// role and its content blocks, each followed by a comma. Empty when
	// the provider never merges.
	OpenRole string
	Open     []byte
}

// HistoryEncoder is implemented by clients whose requests can carry a
// pre-encoded history (Request.History).
type HistoryEncoder interface {
	// EncodeHistory returns prev (nil: empty) extended by msgs. prev is
	// not modified. Messages of a role the provider does not support, and
	// system messages, are an error.
	EncodeHistory(prev *Encoded, msgs []Message) (*Encoded, error)
}

// AppendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does; HTML characters are not escaped.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"':
				dst = append(dst, '\\', '"')
			case '\\':
				dst = append(dst, '\\', '\\')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but not valid JavaScript;
		// encoding/json escapes them, so do we.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"
