package provutil

import (
	"context"
	"net/http/httptrace"
	"sync"
)

// maxPooledBody bounds the buffers kept for reuse: a rare huge request
// does not pin its buffer.
var maxPooledBody = 1 << 20

var bodyPool = sync.Pool{New: func() any { return new(Body) }}

// Body is a model request's body in a buffer reused from call to call: a
// session's history is sent whole on every turn, and allocating it anew
// each time made the collector's work grow with the history.
//
// The buffer goes back to the pool only once nothing can read it any more:
// the call has returned (Done: the SDK starts no more attempts) and every
// attempt that took a connection has finished writing the request
// (httptrace's GotConn and WroteRequest, see Trace). An attempt that took
// a connection and never reports its write keeps the buffer out of the
// pool for good; the collector then frees it like any other.
type Body struct {
	Buf []byte

	mu      sync.Mutex
	gen     uint64 // the call's generation: a trace of an earlier call is ignored
	writing int    // attempts between GotConn and WroteRequest
	done    bool   // the call returned
}

// NewBody returns a body with an empty buffer, reused when one is free.
func NewBody() *Body {
	b := bodyPool.Get().(*Body)
	b.Buf = b.Buf[:0]
	return b
}

// Trace returns ctx with a client trace that follows the attempts writing
// the body.
func (b *Body) Trace(ctx context.Context) context.Context {
	b.mu.Lock()
	gen := b.gen
	b.mu.Unlock()
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			b.mu.Lock()
			if b.gen == gen {
				b.writing++
			}
			b.mu.Unlock()
		},
		WroteRequest: func(httptrace.WroteRequestInfo) {
			b.mu.Lock()
			free := false
			if b.gen == gen {
				b.writing--
				free = b.done && b.writing == 0
			}
			b.mu.Unlock()
			if free {
				b.release()
			}
		},
	})
}

// Done says the call has returned: its buffer is free now, or once the
// writes still under way finish (a server may answer before it has read
// the whole body).
func (b *Body) Done() {
	b.mu.Lock()
	b.done = true
	free := b.writing == 0
	b.mu.Unlock()
	if free {
		b.release()
	}
}

func (b *Body) release() {
	b.mu.Lock()
	b.gen++
	b.writing, b.done = 0, false
	b.mu.Unlock()
	if cap(b.Buf) > maxPooledBody {
		b.Buf = nil
	}
	bodyPool.Put(b)
}

// Send builds a request body into a pooled buffer with build and hands it
// to post with a context that follows the attempts writing it; the buffer
// goes back to the pool once post has returned and those writes have
// ended. An error of build is returned as it is, one of post as post made
// it.
func Send(ctx context.Context, build func(dst []byte) ([]byte, error), post func(ctx context.Context, body []byte) error) error {
	b := NewBody()
	body, err := build(b.Buf)
	if err != nil {
		b.Done()
		return err
	}
	b.Buf = body
	err = post(b.Trace(ctx), body)
	b.Done() // no attempt starts after this; writes under way free it when they end
	return err
}
