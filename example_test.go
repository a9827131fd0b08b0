package stello_test

import (
	"context"
	"encoding/json"
	"log"
	"net/http"
	"os"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/stellohq/stello"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/openai"
	"github.com/stellohq/stello/session"
)

// weatherTool is a tool of the embedding program (see examples/embed).
type weatherTool struct{}

func (weatherTool) Definition() llm.Tool {
	return llm.Tool{Name: "lookup_weather", Description: "Today's weather in a city.",
		Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`)}
}

func (weatherTool) Call(context.Context, session.ToolEnv, json.RawMessage) (string, error) {
	return `{"forecast":"sunny","celsius":21}`, nil
}

// The README's "Embedding in ten lines": Stello with a tool of your own in
// every space.
func Example() {
	ctx := context.Background()
	var model llm.Client        // e.g. openai.New(…); nil runs the offline fake model
	var weather = weatherTool{} // any session.Tool
	// --- README: embedding in ten lines ---
	srv, err := stello.New(ctx, stello.Config{
		DatabaseURL: os.Getenv("DATABASE_URL"), // or Pool: an open *pgxpool.Pool
		Model:       model,
		BuildSpace: func(ctx context.Context, sp session.Space) (stello.SpaceSetup, error) {
			return stello.SpaceSetup{Tools: []session.Tool{weather}}, nil // per space: tools, model, prompts
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close(context.Background())
	log.Fatal(srv.ListenAndServe("127.0.0.1:8080"))
	// --- end ---
}

// A build hook that reads the space's config: {"model": "…"} picks the
// model, {"tools": ["lookup_weather"]} adds the tool, {"persona": "…"}
// sets the default system prompt.
func ExampleConfig_buildSpace() {
	// --- embedding.md: build hook ---
	type spaceConfig struct {
		Model   string   `json:"model"`
		Tools   []string `json:"tools"`
		Persona string   `json:"persona"`
	}
	models := map[string]llm.Client{} // filled at start-up, e.g. one openai.New per model
	build := func(ctx context.Context, sp session.Space) (stello.SpaceSetup, error) {
		var cfg spaceConfig
		if len(sp.Config) > 0 {
			if err := json.Unmarshal(sp.Config, &cfg); err != nil {
				return stello.SpaceSetup{}, err // the space answers 503 until fixed
			}
		}
		setup := stello.SpaceSetup{Model: models[cfg.Model], SystemPrompt: cfg.Persona}
		for _, name := range cfg.Tools {
			if name == "lookup_weather" {
				setup.Tools = append(setup.Tools, weatherTool{})
			}
		}
		return setup, nil
	}
	// --- end ---
	_ = stello.Config{BuildSpace: build}
}

// Serving Stello from your own http.Server, under a path prefix, beside
// your own routes.
func ExampleServer_Handler() {
	ctx := context.Background()
	// --- embedding.md: own server ---
	srv, err := stello.New(ctx, stello.Config{DatabaseURL: os.Getenv("DATABASE_URL")})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/stello/", http.StripPrefix("/stello", srv.Handler()))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("my app")) })
	hs := &http.Server{Addr: "127.0.0.1:8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.ListenAndServe()

	// … at shutdown: your server first, then Stello.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	_ = srv.Close(sctx)
	// --- end ---
}

// Users and their API keys live in the database; the embedding program
// creates them.
func ExampleServer_Store() {
	ctx := context.Background()
	srv, err := stello.New(ctx, stello.Config{DatabaseURL: os.Getenv("DATABASE_URL")})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close(ctx)
	// --- embedding.md: users ---
	user, key, err := srv.Store().CreateUser(ctx, "alice")
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("user %s: send X-API-Key: %s", user.ID, key)
	// --- end ---
}

// The space actors: load one (running the build hook), see what it chose,
// evict it so the next request builds it again.
func ExamplePool() {
	ctx := context.Background()
	srv, err := stello.New(ctx, stello.Config{DatabaseURL: os.Getenv("DATABASE_URL")})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close(ctx)
	spaceID := "…"
	// --- embedding.md: pool ---
	agent, err := srv.Pool().Get(ctx, spaceID)
	if err != nil {
		log.Fatal(err) // session.ErrNotFound, space.ErrBuild, …
	}
	log.Printf("%s: %d extra tools, %d resident spaces", agent.Space.Label, len(agent.Setup.Tools), srv.Pool().Len())
	srv.Pool().Evict(spaceID) // after changing what the hook reads
	// --- end ---
}

// A real model for the embedding program.
func ExampleConfig_model() {
	// --- embedding.md: model ---
	model, err := openai.New(openai.Config{
		BaseURL: "http://127.0.0.1:11434/v1", // any OpenAI-compatible server; empty: api.openai.com
		APIKey:  os.Getenv("OPENAI_API_KEY"),
		Model:   "gpt-4o-mini",
	})
	if err != nil {
		log.Fatal(err)
	}
	cfg := stello.Config{DatabaseURL: os.Getenv("DATABASE_URL"), Model: model}
	// --- end ---
	_ = cfg
}

// Tracing: the program installs its own OpenTelemetry provider and
// propagator; the server's spans use them.
func Example_tracing() {
	ctx := context.Background()
	// --- embedding.md: tracing ---
	exporter, err := otlptracehttp.New(ctx) // reads OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* variables
	if err != nil {
		log.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	defer tp.Shutdown(context.Background()) // runs after srv.Close: flushes the last spans
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	srv, err := stello.New(ctx, stello.Config{DatabaseURL: os.Getenv("DATABASE_URL")})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close(context.Background())
	// --- end ---
	log.Fatal(srv.ListenAndServe("127.0.0.1:8080"))
}
