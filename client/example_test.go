package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/stellohq/stello/client"
)

// The examples run against a real server whose model is the fake one: it
// answers "Echo: " followed by the input.

func Example() {
	baseURL, apiKey := exampleServer() // e.g. "http://127.0.0.1:8080", "sk-…"
	ctx := context.Background()

	c := client.New(baseURL, apiKey)
	sp, err := c.CreateSpace(ctx, client.SpaceInput{Label: "Notes", SystemPrompt: client.String("Be brief.")})
	if err != nil {
		log.Fatal(err)
	}
	tree, err := c.Tree(ctx, sp.ID) // the root session
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Turn(ctx, sp.ID, tree.ID, "Hello")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Text())
	// Output: Echo: Hello
}

func ExampleClient_TurnStream() {
	baseURL, apiKey := exampleServer()
	ctx := context.Background()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Stream"})
	tree, _ := c.Tree(ctx, sp.ID)

	stream, err := c.TurnStream(ctx, sp.ID, tree.ID, "tell me a story")
	if err != nil {
		log.Fatal(err) // refused before streaming: bad input, archived session, busy…
	}
	defer stream.Close()
	for ev, err := range stream.Events() {
		if err != nil {
			log.Fatal(err) // the turn failed, was cancelled, or could not be resumed
		}
		if ev.Type == client.EventDelta {
			fmt.Print(ev.Chunk)
		}
	}
	fmt.Println()
	fmt.Println(stream.Result().Turn.ToolRoundCount)
	// Output:
	// Echo: tell me a story
	// 0
}

func ExampleClient_Fork() {
	baseURL, apiKey := exampleServer()
	ctx := context.Background()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Tree"})
	root, _ := c.Tree(ctx, sp.ID)

	child, err := c.Fork(ctx, sp.ID, root.ID, client.ForkOptions{Label: "Research", Scope: client.String("sources only")})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.SetSlot(ctx, sp.ID, child.ID, client.SlotSystemPrompt, "Cite your sources."); err != nil {
		log.Fatal(err)
	}
	tree, _ := c.Tree(ctx, sp.ID)
	fmt.Println(tree.Label, "→", tree.Children[0].Label, tree.Children[0].Role)
	// Output: Tree → Research standard
}

func ExampleError() {
	baseURL, apiKey := exampleServer()
	ctx := context.Background()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Errors"})
	root, _ := c.Tree(ctx, sp.ID)

	_, err := c.Archive(ctx, sp.ID, root.ID) // the root session cannot be archived
	var apiErr *client.Error
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.Status, apiErr.Code)
	}
	fmt.Println(errors.Is(err, client.ErrConflict), errors.Is(err, client.ErrNotFound))
	// Output:
	// 409 CONFLICT
	// true false
}

func ExampleClient_Dial() {
	baseURL, apiKey := exampleServer()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Live"})
	root, _ := c.Tree(ctx, sp.ID)

	conn, err := c.Dial(ctx, sp.ID)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Enter(ctx, root.ID); err != nil {
		log.Fatal(err)
	}
	res, err := conn.Message(ctx, "over the socket")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Text())
	for ev, err := range conn.Stream(ctx, "streamed too") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(ev.Chunk)
	}
	fmt.Println()
	// Output:
	// Echo: over the socket
	// Echo: streamed too
}

// Turn options: an idempotency key makes a retried request safe, and
// ifBusy chooses what happens when the session is already running a turn.
func ExampleWithIdempotencyKey() {
	baseURL, apiKey := exampleServer()
	ctx := context.Background()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Retries"})
	root, _ := c.Tree(ctx, sp.ID)

	res, err := c.Turn(ctx, sp.ID, root.ID, "charge the card",
		client.WithIdempotencyKey("order-1234"), client.WithIfBusy(client.IfBusyReject))
	if errors.Is(err, client.ErrSessionBusy) {
		log.Print("another turn is running; try later")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.TurnID != "")
}

// A turn's stream can be followed again, from any offset, while it runs
// or after it finished; GetTurn and CancelTurn work on the same id.
func ExampleClient_ResumeStream() {
	baseURL, apiKey := exampleServer()
	ctx := context.Background()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Resume"})
	root, _ := c.Tree(ctx, sp.ID)
	res, _ := c.Turn(ctx, sp.ID, root.ID, "once upon a time")

	stream, err := c.ResumeStream(ctx, sp.ID, root.ID, res.TurnID, 6) // skip "Echo: "
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	for ev, err := range stream.Events() {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(ev.Chunk)
	}
	turn, _ := c.GetTurn(ctx, sp.ID, root.ID, res.TurnID)
	fmt.Println("", turn.State)
}

// Space events keep a live picture of the tree without polling.
func ExampleConn_Subscribe() {
	baseURL, apiKey := exampleServer()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := client.New(baseURL, apiKey)
	sp, _ := c.CreateSpace(ctx, client.SpaceInput{Label: "Watch"})

	conn, err := c.Dial(ctx, sp.ID)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Subscribe(ctx); err != nil {
		log.Fatal(err)
	}
	for {
		select {
		case m := <-conn.Events():
			if m.Type == client.MsgSpaceEvent && m.Event == client.SpaceSessionCreated {
				fmt.Println("new session:", m.Session.Label)
			}
		case <-conn.Done():
			return
		case <-ctx.Done():
			return
		}
	}
}
