package space

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stellohq/stello/llm"
)

// metrics are the Manager's own counters, so two managers (tests run in
// parallel) never share them.
type metrics struct {
	turnsTotal          *prometheus.CounterVec
	turnSeconds         prometheus.Histogram
	consolidationsTotal *prometheus.CounterVec
	integrationsTotal   *prometheus.CounterVec
}

func newMetrics() metrics {
	return metrics{
		turnsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stello_turns_total", Help: "Turns by result (ok, llm_error, timeout, error).",
		}, []string{"result"}),
		turnSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "stello_turn_duration_seconds", Help: "Duration of turns, model time included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		consolidationsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stello_consolidations_total", Help: "Consolidations by result (ok, error).",
		}, []string{"result"}),
		integrationsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stello_integrations_total", Help: "Integrations by result (ok, error).",
		}, []string{"result"}),
	}
}

// Collectors returns the package's metrics plus gauges over the manager's
// actor system, for registration.
func (m *Manager) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.met.turnsTotal, m.met.turnSeconds, m.met.consolidationsTotal, m.met.integrationsTotal,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stello_active_actors", Help: "Resident space actors."},
			func() float64 { return float64(m.sys.Stats().Active) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stello_mailbox_depth", Help: "Messages waiting in all space mailboxes."},
			func() float64 { return float64(m.sys.Stats().Queued) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "stello_actor_evictions_total", Help: "Space actors evicted after their idle TTL."},
			func() float64 { return float64(m.sys.Stats().Evictions) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "stello_actor_starts_total", Help: "Space actors started."},
			func() float64 { return float64(m.sys.Stats().Started) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "stello_mailbox_full_total", Help: "Messages refused because a mailbox was full."},
			func() float64 { return float64(m.sys.Stats().Busy) }),
	}
}

func (m *Manager) observeTurn(d time.Duration, err error) {
	m.met.turnSeconds.Observe(d.Seconds())
	m.met.turnsTotal.WithLabelValues(resultLabel(err)).Inc()
}

func (m *Manager) observeMemory(kind string, err error) {
	r := "ok"
	if err != nil {
		r = "error"
	}
	if kind == "consolidate" {
		m.met.consolidationsTotal.WithLabelValues(r).Inc()
	} else {
		m.met.integrationsTotal.WithLabelValues(r).Inc()
	}
}

func resultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, llm.ErrTimeout):
		return "timeout"
	case errors.Is(err, llm.ErrProvider):
		return "llm_error"
	}
	return "error"
}
