package llm_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/stellohq/stello/llm"
)

func TestStripThink(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"no tags", "  plain answer \n", "plain answer"},
		{"leading block", "<think>\nreasoning\nmore\n</think>\n\nThe answer.", "The answer."},
		{"several blocks", "<think>a</think>One <think>b\nc</think>two", "One two"},
		{"unclosed leading block", "<think>still thinking about\nit", ""},
		{"unclosed after text", "Answer first. <think>then musing", "Answer first."},
		{"orphan closing tag", "reasoning without opening</think>\nFinal.", "Final."},
		{"orphan close then block", "r</think> a <think>x</think> b", "a  b"},
		{"empty block", "<think></think>ok", "ok"},
		{"only whitespace", " \n\t ", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, llm.StripThink(tt.in))
		})
	}
}

func TestExtractJSONObject(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
		ok   bool
	}{
		{"bare object", `{"a":1}`, `{"a":1}`, true},
		{"surrounding prose", `Sure! Here it is: {"a": [1, 2]} Hope it helps.`, `{"a": [1, 2]}`, true},
		{"json code fence", "Result:\n```json\n{\n  \"synthesis\": \"x\"\n}\n```\nDone.", "{\n  \"synthesis\": \"x\"\n}", true},
		{"plain code fence", "```\n{\"a\":true}\n```", `{"a":true}`, true},
		{"fence preferred over earlier object", "Example {} then\n```json\n{\"real\":1}\n```", `{"real":1}`, true},
		{"think block removed", "<think>maybe {\"draft\":1}</think>{\"final\":2}", `{"final":2}`, true},
		{"braces inside strings", `x {"s": "a } b { c", "n": {"m": "\"}"}} y`, `{"s": "a } b { c", "n": {"m": "\"}"}}`, true},
		{"escaped backslash before quote", `{"p": "C:\\"} tail }`, `{"p": "C:\\"}`, true},
		{"invalid first candidate", `use {placeholders} like {"k": "v"}`, `{"k": "v"}`, true},
		{"nested first wins", `{"outer": {"inner": 1}} {"second": 2}`, `{"outer": {"inner": 1}}`, true},
		{"array only", `[1, 2, 3]`, "", false},
		{"unbalanced", `{"a": 1`, "", false},
		{"invalid json", `{a: 1}`, "", false},
		{"empty", "", "", false},
		{"unterminated fence", "```json\n{\"a\":1}", `{"a":1}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := llm.ExtractJSONObject(tt.in)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}
