package session

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/stellohq/stello/llm"
)

// ValidText refuses text that cannot be stored or sent as it is: the NUL
// character (PostgreSQL text cannot hold it) and invalid UTF-8 (which would
// otherwise be replaced silently). The error names the field.
func ValidText(field, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return &FieldError{Field: field, Msg: "must not contain the NUL character (\\u0000)"}
	}
	if !utf8.ValidString(s) {
		return &FieldError{Field: field, Msg: "must be valid UTF-8"}
	}
	return nil
}

// validOptText checks an optional text field.
func validOptText(field string, s *string) error {
	if s == nil {
		return nil
	}
	return ValidText(field, *s)
}

// Validate checks the text fields of a new space.
func (in *SpaceInput) Validate() error {
	if err := ValidateLabel(in.Label); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"systemPrompt", in.SystemPrompt}, {"consolidatePrompt", in.ConsolidatePrompt}, {"integratePrompt", in.IntegratePrompt}} {
		if err := validOptText(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the text fields of a space patch.
func (p *SpacePatch) Validate() error {
	if p.Label != nil {
		if err := ValidateLabel(*p.Label); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"systemPrompt", p.SystemPrompt}, {"consolidatePrompt", p.ConsolidatePrompt}, {"integratePrompt", p.IntegratePrompt}} {
		if err := validOptText(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// CheckInput refuses a turn input that alone is larger than the context
// budget: it could never be sent to the model whole, and summarising it
// again on every later turn would poison the session.
func (e *Engine) CheckInput(input string) error {
	n := EstimateTokens(llm.Message{Role: llm.RoleUser, Content: input})
	if n > e.opts.MaxContextTokens {
		return &FieldError{Field: "input", Msg: fmt.Sprintf(
			"is about %d tokens, over the context budget of %d tokens (--max-context-tokens); send it in smaller parts",
			n, e.opts.MaxContextTokens)}
	}
	return nil
}
