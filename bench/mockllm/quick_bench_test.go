package mockllm

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func BenchmarkQuietLongConversation(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"model":"m","messages":[{"role":"system","content":"You are a load-test assistant."}`)
	for i := 0; i < 300; i++ {
		sb.WriteString(`,{"role":"user","content":"load test input"},{"role":"assistant","content":"` + strings.Repeat("lorem ipsum ", 9) + `"}`)
	}
	sb.WriteString(`,{"role":"user","content":"load test input"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}`)
	body := sb.String()
	s := NewQuiet(Config{})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body)))
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
