// Package bench is the load harness behind `stello bench`: it drives any
// server that implements docs/api.md through its public REST, SSE and
// WebSocket API, optionally spawning a Stello server and a mock model
// itself, and reports throughput and latency per scenario.
package bench

import (
	"math"
	"sort"
	"sync"
	"time"
)

// recorder collects latencies and errors from many goroutines.
type recorder struct {
	mu     sync.Mutex
	lat    []time.Duration
	errors int
	errMsg map[string]int
}

func newRecorder() *recorder { return &recorder{errMsg: map[string]int{}} }

func (r *recorder) ok(d time.Duration) {
	r.mu.Lock()
	r.lat = append(r.lat, d)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	r.errors++
	if len(r.errMsg) < 20 {
		r.errMsg[err.Error()]++
	}
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lat)
}

// summary is the latency distribution in milliseconds.
type summary struct {
	N     int
	P50   float64
	P95   float64
	P99   float64
	Max   float64
	Mean  float64
	Error int
}

func (r *recorder) summary() summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return summarize(r.lat, r.errors)
}

func summarize(lat []time.Duration, errs int) summary {
	s := summary{N: len(lat), Error: errs}
	if len(lat) == 0 {
		return s
	}
	d := append([]time.Duration(nil), lat...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		if i < 0 {
			i = 0
		}
		return ms(d[i])
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	s.P50, s.P95, s.P99, s.Max = q(0.50), q(0.95), q(0.99), ms(d[len(d)-1])
	s.Mean = ms(sum / time.Duration(len(d)))
	return s
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

func round2(f float64) float64 { return math.Round(f*100) / 100 }
