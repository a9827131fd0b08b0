// Package guard turns panics at goroutine boundaries into errors: the stack
// is logged once, the panic is counted by where it happened, and whoever
// waits on the goroutine gets an error instead of the process dying.
package guard

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

// ErrPanic is wrapped by every recovered panic; the API answers it as
// 500 INTERNAL without showing the panic's value.
var ErrPanic = errors.New("internal error")

// PanicError is a recovered panic.
type PanicError struct {
	Where string
	Value any
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic in %s: %v", e.Where, e.Value) }

// Unwrap makes a PanicError match ErrPanic.
func (e *PanicError) Unwrap() error { return ErrPanic }

// Guard logs and counts recovered panics. A nil *Guard still recovers; it
// only logs nothing and counts nothing.
type Guard struct {
	log    *zap.Logger
	panics *prometheus.CounterVec
}

// New returns a guard logging to log.
func New(log *zap.Logger) *Guard {
	if log == nil {
		log = zap.NewNop()
	}
	return &Guard{log: log, panics: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stello_panics_total", Help: "Panics recovered at a goroutine boundary, by where they happened.",
	}, []string{"where"})}
}

// Collector returns the panic counter, for registration.
func (g *Guard) Collector() prometheus.Collector { return g.panics }

// Count returns how many panics were recovered at where (for tests).
func (g *Guard) Count(where string) int {
	if g == nil {
		return 0
	}
	var m dto.Metric
	if err := g.panics.WithLabelValues(where).Write(&m); err != nil {
		return 0
	}
	return int(m.GetCounter().GetValue())
}

// Caught records a recovered panic value: it logs the stack and counts it,
// and returns the error to answer with. Call it from the deferred function
// that called recover, so the stack still shows the panic.
func (g *Guard) Caught(where string, v any) error {
	err := &PanicError{Where: where, Value: v}
	if g != nil {
		g.panics.WithLabelValues(where).Inc()
		g.log.Error("recovered panic", zap.String("where", where), zap.Any("panic", v),
			zap.ByteString("stack", debug.Stack()))
	}
	return err
}
