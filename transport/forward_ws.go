package transport

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"
)

// wsTap is the owner's side of a WebSocket proxied to it (the body of the
// 101 answer, which httputil.ReverseProxy copies to the client). It follows
// the frame boundaries of what the owner sends, so that when this process
// stops it can end the client's stream with a close frame (1001) between
// two frames instead of cutting the connection: the client then knows to
// reconnect, as with a socket this process serves itself.
type wsTap struct {
	io.ReadWriteCloser
	done func(*wsTap)

	mu       sync.Mutex
	closing  bool
	sentBye  bool
	hdr      []byte // header bytes of the frame being read
	payload  uint64 // payload bytes of the current frame still to pass
	needHead int    // header length once known (0: not yet)
}

// closeFrame is a WebSocket close frame, server to client (unmasked):
// 1001 going away.
var closeFrame = func() []byte {
	reason := "server shutting down"
	b := []byte{0x88, byte(2 + len(reason))}
	b = binary.BigEndian.AppendUint16(b, 1001)
	return append(b, reason...)
}()

func (t *wsTap) Read(p []byte) (int, error) {
	n, err := t.ReadWriteCloser.Read(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.follow(p[:n])
	if err != nil && t.closing && !t.sentBye && t.atBoundary() && len(p) >= len(closeFrame) && n == 0 {
		t.sentBye = true
		return copy(p, closeFrame), nil
	}
	if err == nil && t.sentBye {
		return 0, io.EOF
	}
	return n, err
}

// atBoundary reports whether everything passed so far ends on a frame
// boundary.
func (t *wsTap) atBoundary() bool { return t.payload == 0 && len(t.hdr) == 0 }

// follow advances the frame parser over b.
func (t *wsTap) follow(b []byte) {
	for len(b) > 0 {
		if t.payload > 0 {
			k := uint64(len(b))
			if k > t.payload {
				k = t.payload
			}
			t.payload -= k
			b = b[k:]
			continue
		}
		t.hdr = append(t.hdr, b[0])
		b = b[1:]
		if len(t.hdr) == 2 {
			t.needHead = 2
			switch t.hdr[1] & 0x7f {
			case 126:
				t.needHead += 2
			case 127:
				t.needHead += 8
			}
			if t.hdr[1]&0x80 != 0 {
				t.needHead += 4
			}
		}
		if len(t.hdr) >= 2 && len(t.hdr) == t.needHead {
			switch n := t.hdr[1] & 0x7f; n {
			case 126:
				t.payload = uint64(binary.BigEndian.Uint16(t.hdr[2:4]))
			case 127:
				t.payload = binary.BigEndian.Uint64(t.hdr[2:10])
			default:
				t.payload = uint64(n)
			}
			t.hdr, t.needHead = t.hdr[:0], 0
		}
	}
}

// goAway ends the client's stream: the owner's side is closed, which ends
// the pending read, and the client gets a close frame if the stream is
// between frames.
func (t *wsTap) goAway() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
	_ = t.ReadWriteCloser.Close()
}

func (t *wsTap) Close() error {
	t.done(t)
	return t.ReadWriteCloser.Close()
}

// taps are the WebSockets this process proxies.
type taps struct {
	mu  sync.Mutex
	set map[*wsTap]struct{}
	off bool
}

// errForwarderStopping refuses a WebSocket that the owner accepted while
// this (forwarding) process is shutting down: the owner is fine.
var errForwarderStopping = errors.New("this process is shutting down")

func (ts *taps) add(rwc io.ReadWriteCloser) (*wsTap, error) {
	t := &wsTap{ReadWriteCloser: rwc, done: ts.remove}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.off {
		return nil, errForwarderStopping
	}
	if ts.set == nil {
		ts.set = map[*wsTap]struct{}{}
	}
	ts.set[t] = struct{}{}
	return t, nil
}

func (ts *taps) remove(t *wsTap) {
	ts.mu.Lock()
	delete(ts.set, t)
	ts.mu.Unlock()
}

// closeAll ends every proxied WebSocket with 1001.
func (ts *taps) closeAll() {
	ts.mu.Lock()
	ts.off = true
	list := make([]*wsTap, 0, len(ts.set))
	for t := range ts.set {
		list = append(list, t)
	}
	ts.mu.Unlock()
	for _, t := range list {
		t.goAway()
	}
}
