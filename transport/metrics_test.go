package transport_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/transport"
)

// 20,000 requests with made-up methods and paths, which anyone can send
// without a key, add a bounded number of metric series: labels come only
// from closed sets.
func TestMetricLabelsStayBoundedUnderMadeUpMethodsAndPaths(t *testing.T) {
	t.Parallel()
	st := testutil.NewStack(t, testutil.StackOptions{})
	h := st.Front.Handler()
	paths := []string{"/healthz", "/readyz", "/spaces", "/spaces/%d", "/spaces/%d/sessions/%d/turn", "/no/such/%d", "/%d"}
	for i := range 20_000 {
		method := fmt.Sprintf("M%05d", i)
		switch i % 4 {
		case 1:
			method = http.MethodGet
		case 2:
			method = "get" // methods are case-sensitive: not GET
		}
		path := paths[i%len(paths)]
		if strings.Contains(path, "%d") {
			path = strings.ReplaceAll(path, "%d", fmt.Sprint(i))
		}
		req := httptest.NewRequest(method, path, nil)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}

	fams, err := st.Registry.Gather()
	require.NoError(t, err)
	series := map[string]int{}
	allowed := map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true,
		"CONNECT": true, "OPTIONS": true, "TRACE": true, "other": true}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "stello_http_") {
			continue
		}
		series[f.GetName()] = len(f.GetMetric())
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "method":
					assert.True(t, allowed[l.GetValue()], "method label %q", l.GetValue())
				case "route":
					assert.False(t, strings.ContainsAny(l.GetValue(), "0123456789"), "route label %q holds a request path", l.GetValue())
				}
			}
		}
	}
	require.NotZero(t, series["stello_http_requests_total"], "requests are counted")
	for name, n := range series {
		assert.LessOrEqual(t, n, 40, "%s has %d series", name, n)
	}
}

// With SeparateAdmin, /metrics and /debug/pprof/ are on AdminHandler only.
func TestSeparateAdminServesMetricsAndPprofOnlyThere(t *testing.T) {
	t.Parallel()
	st := testutil.NewStack(t, testutil.StackOptions{Transport: transport.Options{SeparateAdmin: true, Pprof: true}})
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		rec := httptest.NewRecorder()
		st.Front.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		assert.Equal(t, http.StatusNotFound, rec.Code, "main listener %s", path)
		rec = httptest.NewRecorder()
		st.Front.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		assert.Equal(t, http.StatusOK, rec.Code, "admin listener %s", path)
	}
}
