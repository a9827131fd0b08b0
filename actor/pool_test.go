package actor

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goroutineID is for tests only: which goroutine runs the caller.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	// "goroutine 123 [running]:..."
	for i := len("goroutine "); i < len(buf); i++ {
		if buf[i] == ' ' {
			return string(buf[len("goroutine "):i])
		}
	}
	return string(buf)
}

func TestTasksRunOnKeptWorkers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := newWorkers(ctx, nil)
	defer func() { cancel(); w.wait() }()
	ids := make(chan string, 1)
	run := func() string {
		w.run(func() { ids <- goroutineID() })
		return <-ids
	}
	first := run()
	// The worker parks after sending; wait until it is idle again.
	require.Eventually(t, func() bool { return w.waiting.Load() == 1 }, time.Second, time.Millisecond)
	for i := 0; i < 20; i++ {
		require.Equal(t, first, run(), "a sequential task reuses the idle worker")
		require.Eventually(t, func() bool { return w.waiting.Load() == 1 }, time.Second, time.Millisecond)
	}
}

func TestConcurrentTasksNeverWaitForAWorker(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := newWorkers(ctx, nil)
	defer func() { cancel(); w.wait() }()
	// More tasks than may stay idle, all blocked at once: each gets its own
	// goroutine at once.
	n := maxIdleWorkers + 44
	var started sync.WaitGroup
	started.Add(n)
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		w.run(func() { started.Done(); <-release })
	}
	done := make(chan struct{})
	go func() { started.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("tasks waited for each other")
	}
	close(release)
	// At most maxIdleWorkers stay; the rest exit.
	require.Eventually(t, func() bool { return w.waiting.Load() == maxIdleWorkers }, 5*time.Second, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	assert.EqualValues(t, maxIdleWorkers, w.waiting.Load())
}

func TestIdleWorkersExitWhenTheSystemCloses(t *testing.T) {
	s, _ := newSys(t, Options{})
	require.NoError(t, s.Send("a", func(a *Actor) {
		a.Go(func(ctx context.Context) any { return nil }, nil)
	}))
	// The task's worker (and the actor's run, also on a worker) go idle.
	require.Eventually(t, func() bool { return s.pool.waiting.Load() >= 1 }, time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Close(ctx))
	assert.EqualValues(t, 0, s.pool.waiting.Load(), "Close waits for the idle workers to exit")
}

// A function that panics past its own recover does not take the process
// or the worker down: the worker goes on to the next function.
func TestAWorkerSurvivesAPanic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := newWorkers(ctx, nil)
	defer func() { cancel(); w.wait() }()
	done := make(chan string, 1)
	w.run(func() { panic("boom") })
	require.Eventually(t, func() bool { return w.waiting.Load() == 1 }, time.Second, time.Millisecond,
		"the worker that panicked is idle again")
	w.run(func() { done <- "ran" })
	select {
	case v := <-done:
		assert.Equal(t, "ran", v)
	case <-time.After(5 * time.Second):
		t.Fatal("the next function never ran")
	}
}
