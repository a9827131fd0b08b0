// Package sdkref encodes model requests with the official SDKs' own
// marshalling. It is the reference the providers' hand-written request
// bodies are tested against, and is imported by tests only.
package sdkref

import (
	"encoding/json"
	"fmt"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// OpenAIBody is the body the OpenAI SDK sends for req (streaming adds the
// stream flag and asks for usage, as the provider does).
func OpenAIBody(model string, cfgMaxTokens int, maxCompletionTokens bool, req llm.Request, stream bool) ([]byte, error) {
	p, err := OpenAIParams(model, cfgMaxTokens, maxCompletionTokens, req)
	if err != nil {
		return nil, err
	}
	if stream {
		p.StreamOptions = oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)}
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

// OpenAIParams converts an llm.Request to the OpenAI SDK's parameters, the
// way the provider did before it wrote bodies itself.
func OpenAIParams(model string, cfgMaxTokens int, maxCompletionTokens bool, req llm.Request) (oai.ChatCompletionNewParams, error) {
	p := oai.ChatCompletionNewParams{Model: shared.ChatModel(model)}

	for i, m := range req.Messages {
		switch m.Role {
		case llm.RoleSystem:
			p.Messages = append(p.Messages, oai.SystemMessage(m.Content))
		case llm.RoleUser:
			p.Messages = append(p.Messages, oai.UserMessage(m.Content))
		case llm.RoleAssistant:
			asst := oai.ChatCompletionAssistantMessageParam{}
			if m.Content != "" || len(m.ToolCalls) == 0 {
				asst.Content.OfString = oai.String(m.Content)
			}
			for _, tc := range m.ToolCalls {
				asst.ToolCalls = append(asst.ToolCalls, oai.ChatCompletionMessageToolCallUnionParam{
					OfFunction: &oai.ChatCompletionMessageFunctionToolCallParam{
						ID: tc.ID,
						Function: oai.ChatCompletionMessageFunctionToolCallFunctionParam{
							Name:      tc.Name,
							Arguments: provutil.Arguments(tc.Input),
						},
					},
				})
			}
			p.Messages = append(p.Messages, oai.ChatCompletionMessageParamUnion{OfAssistant: &asst})
		case llm.RoleTool:
			p.Messages = append(p.Messages, oai.ToolMessage(m.Content, m.ToolCallID))
		default:
			return p, &llm.ProviderError{Provider: "openai", Message: fmt.Sprintf("message %d has unsupported role %q", i, m.Role)}
		}
	}

	for _, t := range req.Tools {
		schema, err := provutil.SchemaObject(t.Parameters)
		if err != nil {
			return p, &llm.ProviderError{Provider: "openai", Message: fmt.Sprintf("tool %q: %v", t.Name, err)}
		}
		params := make(shared.FunctionParameters, len(schema))
		for k, v := range schema {
			params[k] = v
		}
		def := shared.FunctionDefinitionParam{Name: t.Name, Parameters: params}
		if t.Description != "" {
			def.Description = oai.String(t.Description)
		}
		p.Tools = append(p.Tools, oai.ChatCompletionFunctionTool(def))
	}

	maxTokens := req.MaxTokens
	if maxTokens <= 0 {
		maxTokens = cfgMaxTokens
	}
	if maxTokens > 0 {
		if maxCompletionTokens {
			p.MaxCompletionTokens = oai.Int(int64(maxTokens))
		} else {
			p.MaxTokens = oai.Int(int64(maxTokens))
		}
	}

	if req.Format == llm.FormatJSON {
		p.ResponseFormat = oai.ChatCompletionNewParamsResponseFormatUnion{
			OfJSONObject: &shared.ResponseFormatJSONObjectParam{},
		}
	}
	return p, nil
}
