package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/anthropic"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/llm/openai"
)

// llmFlags choose and configure the model provider.
type llmFlags struct {
	provider   string
	baseURL    string
	model      string
	apiKey     string
	timeout    time.Duration
	maxTokens  int
	maxRetries int
	fakeDelay  time.Duration
	fakeWords  int
	fakeChunk  time.Duration
}

func (l *llmFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.provider, "llm", "", "model provider: openai, anthropic or fake (default: fake when no API key is configured)")
	fs.StringVar(&l.baseURL, "llm-base-url", "", "provider base URL, e.g. http://127.0.0.1:11434/v1 for a local OpenAI-compatible server")
	fs.StringVar(&l.model, "llm-model", "", "model name (default gpt-4o-mini for openai, claude-sonnet-4-5 for anthropic)")
	fs.StringVar(&l.apiKey, "llm-api-key", "", "provider API key (also OPENAI_API_KEY / ANTHROPIC_API_KEY)")
	fs.DurationVar(&l.timeout, "llm-timeout", 90*time.Second, "deadline of one model call")
	fs.IntVar(&l.maxTokens, "llm-max-tokens", 0, "max output tokens of one call (0: provider default; anthropic 1024)")
	fs.IntVar(&l.maxRetries, "llm-max-retries", 2, "retries of a failed model call (connection errors, 429, 5xx)")
	fs.DurationVar(&l.fakeDelay, "fake-latency", 0, "fake model: delay before the first chunk")
	fs.IntVar(&l.fakeWords, "fake-reply-words", 0, "fake model: words per reply (0: a short echo)")
	fs.DurationVar(&l.fakeChunk, "fake-chunk-delay", 0, "fake model: delay between streamed chunks")
}

// client builds the configured provider. The fake model is chosen only when
// no provider was asked for and no API key is configured, with a warning.
func (l *llmFlags) client(log *zap.Logger) (llm.Client, error) {
	provider := l.provider
	key := l.apiKey
	if provider == "" {
		// A key in the environment picks the real provider, which bills it:
		// never silently.
		envVar := ""
		switch {
		case key != "":
			provider = "openai"
		case os.Getenv("OPENAI_API_KEY") != "":
			provider, envVar = "openai", "OPENAI_API_KEY"
		case os.Getenv("ANTHROPIC_API_KEY") != "":
			provider, envVar = "anthropic", "ANTHROPIC_API_KEY"
		default:
			provider = "fake"
			log.Warn("no model API key configured: using the offline fake model (pass --llm openai|anthropic and a key for real conversations)")
		}
		if envVar != "" {
			log.Warn("USING THE REAL "+strings.ToUpper(provider)+" API, billed to the key in "+envVar+
				": it is set in the environment and no --llm was given (pass --llm fake for the offline model)",
				zap.String("provider", provider), zap.String("variable", envVar))
		}
	}
	switch provider {
	case "openai":
		if key == "" {
			key = os.Getenv("OPENAI_API_KEY")
		}
		if key == "" && l.baseURL == "" {
			return nil, &usageError{"--llm openai needs an API key (--llm-api-key, STELLO_LLM_API_KEY or OPENAI_API_KEY), " +
				"or --llm-base-url for an OpenAI-compatible server that needs none"}
		}
		model := l.model
		if model == "" {
			model = "gpt-4o-mini"
		}
		return openai.New(openai.Config{BaseURL: l.baseURL, APIKey: key, Model: model, MaxTokens: l.maxTokens,
			Timeout: l.timeout, MaxRetries: l.maxRetries})
	case "anthropic":
		if key == "" {
			key = os.Getenv("ANTHROPIC_API_KEY")
		}
		if key == "" {
			return nil, &usageError{"--llm anthropic needs an API key: --llm-api-key, STELLO_LLM_API_KEY or ANTHROPIC_API_KEY"}
		}
		model := l.model
		if model == "" {
			model = "claude-sonnet-4-5"
		}
		return anthropic.New(anthropic.Config{BaseURL: l.baseURL, APIKey: key, Model: model, MaxTokens: l.maxTokens,
			Timeout: l.timeout, MaxRetries: l.maxRetries})
	case "fake":
		return fake.New(fake.Config{Latency: l.fakeDelay, ReplyWords: l.fakeWords, ChunkDelay: l.fakeChunk}), nil
	}
	return nil, &usageError{fmt.Sprintf("--llm must be openai, anthropic or fake, not %q", provider)}
}
