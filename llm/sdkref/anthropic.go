package sdkref

import (
	"encoding/json"
	"fmt"
	"strings"

	sdk "github.com/anthropics/anthropic-sdk-go"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// AnthropicBody is the body the Anthropic SDK sends for req.
func AnthropicBody(model string, cfgMaxTokens int, req llm.Request, stream bool) ([]byte, error) {
	p, err := AnthropicParams(model, cfgMaxTokens, req)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil || !stream {
		return b, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m["stream"] = json.RawMessage("true")
	return json.Marshal(m)
}

// AnthropicParams converts an llm.Request to the Anthropic SDK's parameters,
// the way the provider did before it wrote bodies itself. System messages go to
// the system parameter; tool results become tool_result blocks of a user
// message; consecutive messages of one role are merged into one message.
func AnthropicParams(model string, cfgMaxTokens int, req llm.Request) (sdk.MessageNewParams, error) {
	maxTokens := req.MaxTokens
	if maxTokens <= 0 {
		maxTokens = cfgMaxTokens
	}
	if maxTokens <= 0 {
		maxTokens = 1024
	}
	p := sdk.MessageNewParams{Model: sdk.Model(model), MaxTokens: int64(maxTokens)}

	var system []string
	add := func(role sdk.MessageParamRole, blocks ...sdk.ContentBlockParamUnion) {
		if len(blocks) == 0 {
			return
		}
		if n := len(p.Messages); n > 0 && p.Messages[n-1].Role == role {
			p.Messages[n-1].Content = append(p.Messages[n-1].Content, blocks...)
			return
		}
		p.Messages = append(p.Messages, sdk.MessageParam{Role: role, Content: blocks})
	}

	for i, m := range req.Messages {
		switch m.Role {
		case llm.RoleSystem:
			if s := strings.TrimSpace(m.Content); s != "" {
				system = append(system, s)
			}
		case llm.RoleUser:
			if m.Content != "" {
				add(sdk.MessageParamRoleUser, sdk.NewTextBlock(m.Content))
			}
		case llm.RoleAssistant:
			var blocks []sdk.ContentBlockParamUnion
			if m.Content != "" {
				blocks = append(blocks, sdk.NewTextBlock(m.Content))
			}
			for _, tc := range m.ToolCalls {
				blocks = append(blocks, sdk.NewToolUseBlock(tc.ID, json.RawMessage(provutil.Arguments(tc.Input)), tc.Name))
			}
			add(sdk.MessageParamRoleAssistant, blocks...)
		case llm.RoleTool:
			result := sdk.ToolResultBlockParam{ToolUseID: m.ToolCallID}
			if m.Content != "" {
				result.Content = []sdk.ToolResultBlockParamContentUnion{{OfText: &sdk.TextBlockParam{Text: m.Content}}}
			}
			add(sdk.MessageParamRoleUser, sdk.ContentBlockParamUnion{OfToolResult: &result})
		default:
			return p, &llm.ProviderError{Provider: "anthropic", Message: fmt.Sprintf("message %d has unsupported role %q", i, m.Role)}
		}
	}

	if req.Format == llm.FormatJSON {
		system = append(system, "Respond with a single valid JSON object and nothing else.")
	}
	if len(system) > 0 {
		p.System = []sdk.TextBlockParam{{Text: strings.Join(system, "\n\n")}}
	}

	for _, t := range req.Tools {
		schema, err := provutil.SchemaObject(t.Parameters)
		if err != nil {
			return p, &llm.ProviderError{Provider: "anthropic", Message: fmt.Sprintf("tool %q: %v", t.Name, err)}
		}
		input := sdk.ToolInputSchemaParam{ExtraFields: map[string]any{}}
		for k, v := range schema {
			switch k {
			case "type":
				// always "object", set by the SDK
			case "properties":
				input.Properties = v
			case "required":
				if err := json.Unmarshal(v, &input.Required); err != nil {
					return p, &llm.ProviderError{Provider: "anthropic", Message: fmt.Sprintf("tool %q: required must be a list of names", t.Name)}
				}
			default:
				input.ExtraFields[k] = v
			}
		}
		tool := sdk.ToolParam{Name: t.Name, InputSchema: input}
		if t.Description != "" {
			tool.Description = sdk.String(t.Description)
		}
		p.Tools = append(p.Tools, sdk.ToolUnionParam{OfTool: &tool})
	}
	return p, nil
}
