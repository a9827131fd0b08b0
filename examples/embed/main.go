// Command embed is a Go program that runs Stello inside itself and gives
// the model a tool of its own, lookup_weather, in the spaces whose config
// asks for it:
//
//	POST /spaces {"label": "Trip", "config": {"tools": ["lookup_weather"]}}
//
// The per-space build hook reads the space's config when the space's actor
// loads and adds the tool (and a default system prompt mentioning it).
// Every other space gets the server's defaults.
//
// Run it against a PostgreSQL database and, optionally, an
// OpenAI-compatible model (without one it uses the offline fake model,
// which never calls tools):
//
//	go run ./examples/embed --database-url postgres://… \
//	    --llm-base-url http://127.0.0.1:11434/v1 --llm-model llama3.1
//
// It creates a user and prints its API key, then serves the API until
// interrupted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/stellohq/stello"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/openai"
	"github.com/stellohq/stello/session"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "embed:", err)
		os.Exit(1)
	}
}

// run is main without the process around it: it serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("embed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	dbURL := fs.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL connection string")
	baseURL := fs.String("llm-base-url", "", "OpenAI-compatible base URL (empty: the offline fake model)")
	model := fs.String("llm-model", "gpt-4o-mini", "model name")
	apiKey := fs.String("llm-api-key", os.Getenv("OPENAI_API_KEY"), "model API key")
	if err := fs.Parse(args); err != nil {
		return err
	}

	var client llm.Client // nil: stello's fake model
	if *baseURL != "" {
		c, err := openai.New(openai.Config{BaseURL: *baseURL, APIKey: *apiKey, Model: *model, Timeout: time.Minute})
		if err != nil {
			return fmt.Errorf("model: %w", err)
		}
		client = c
	}
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.AddSync(stderr), zapcore.InfoLevel))

	srv, err := stello.New(ctx, stello.Config{
		DatabaseURL: *dbURL,
		Model:       client,
		BuildSpace:  buildSpace,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Close(cctx)
	}()

	user, key, err := srv.Store().CreateUser(ctx, "embed-demo")
	if err != nil {
		return fmt.Errorf("create user: %w", err)
	}
	fmt.Fprintf(stdout, "user %s, api key: %s\n", user.ID, key)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	served := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				served <- fmt.Errorf("serve panicked: %v", v)
			}
		}()
		served <- srv.Serve(ln)
	}()
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())
	select {
	case <-ctx.Done():
		return nil
	case err := <-served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// spaceConfig is the part of a space's config this program reads.
type spaceConfig struct {
	Tools []string `json:"tools"`
}

// buildSpace is the per-space build hook: a space whose config lists
// "lookup_weather" in "tools" gets the weather tool and a system prompt
// that mentions it (used by sessions without a system prompt of their
// own).
func buildSpace(_ context.Context, sp session.Space) (stello.SpaceSetup, error) {
	var cfg spaceConfig
	if len(sp.Config) > 0 {
		if err := json.Unmarshal(sp.Config, &cfg); err != nil {
			return stello.SpaceSetup{}, fmt.Errorf("space config: %w", err)
		}
	}
	if !slices.Contains(cfg.Tools, weatherToolName) {
		return stello.SpaceSetup{}, nil
	}
	return stello.SpaceSetup{
		Tools:        []session.Tool{weatherTool{}},
		SystemPrompt: "You are a travel assistant. Call lookup_weather for any question about the weather.",
	}, nil
}

// --- embedding.md: tool ---
const weatherToolName = "lookup_weather"

// weatherTool answers every city with the same canned forecast.
type weatherTool struct{}

// Definition implements session.Tool.
func (weatherTool) Definition() llm.Tool {
	return llm.Tool{
		Name:        weatherToolName,
		Description: "Look up today's weather in a city.",
		Parameters: json.RawMessage(`{"type":"object","properties":{` +
			`"city":{"type":"string","description":"City name"}},"required":["city"]}`),
	}
}

// Call implements session.Tool.
func (weatherTool) Call(_ context.Context, _ session.ToolEnv, input json.RawMessage) (string, error) {
	var in struct {
		City string `json:"city"`
	}
	if err := json.Unmarshal(input, &in); err != nil || in.City == "" {
		return "", errors.New(`give a "city"`)
	}
	out, err := json.Marshal(map[string]any{"city": in.City, "forecast": "sunny", "celsius": 21})
	return string(out), err
}

// --- end ---
