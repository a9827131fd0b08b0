package transport

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"syscall"

	"github.com/gorilla/websocket"
)

// An idle WebSocket costs what its reader goroutine holds while it waits.
// Waiting inside gorilla's read path grows that goroutine's stack past its
// first 2 KiB and the garbage collector cannot shrink it back (it halves a
// stack only when less than a quarter of it is in use, and the guard the
// runtime keeps for nosplit functions alone is 800 bytes). So the reader
// waits for the socket to become readable with a shallow stack of its own
// (wsSock.wait), enters gorilla only when there is something to read, and
// once gorilla holds no unread bytes again hands over to a fresh goroutine,
// whose stack is small, and ends. The pongs answering the hub's pings (and
// pings) are read without entering gorilla, which after a control frame
// would wait for the next message in its read path.

// wsSock is a WebSocket's TCP connection as gorilla reads it. It follows
// the frames that pass through Read, so the reader knows when gorilla's
// buffer holds nothing it has not returned yet: only then may the reader
// wait on the socket itself.
type wsSock struct {
	*net.TCPConn
	raw syscall.RawConn

	// Owned by the reader goroutine (gorilla reads on it).
	got   uint8  // header bytes of the current frame seen so far
	need  uint8  // header length of the current frame, once known
	ext   uint8  // extended length bytes of the current frame (0, 2 or 8)
	b0    byte   // first header byte: FIN and opcode
	left  uint64 // payload bytes of the current frame still to come
	tail  int    // bytes read after the end of the last complete message
	ready int    // complete messages read that gorilla has not returned
}

// newWSSock wraps conn, or returns nil when the connection is not plain TCP
// (TLS, a pipe) or the platform cannot peek at a socket: the reader then
// waits in gorilla's read path.
func newWSSock(conn net.Conn) *wsSock {
	tcp, ok := conn.(*net.TCPConn)
	if !ok || !canPeek {
		return nil
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return &wsSock{TCPConn: tcp, raw: raw}
}

// Read reads for gorilla and follows the frames read.
func (s *wsSock) Read(p []byte) (int, error) {
	n, err := s.TCPConn.Read(p)
	s.follow(p[:n])
	return n, err
}

// follow advances the frame parser over b, bytes gorilla has read.
func (s *wsSock) follow(b []byte) {
	for len(b) > 0 {
		if s.got > 0 && s.got == s.need {
			k := uint64(len(b))
			if k > s.left {
				k = s.left
			}
			s.left -= k
			s.tail += int(k)
			b = b[k:]
		} else {
			s.header(b[0])
			s.tail++
			b = b[1:]
		}
		if s.got > 0 && s.got == s.need && s.left == 0 {
			// The frame is complete; a final data frame completes a message.
			if op := s.b0 & 0x0f; s.b0&0x80 != 0 && op <= websocket.BinaryMessage {
				s.ready++
				s.tail = 0
			}
			s.got, s.need = 0, 0
		}
	}
}

// header takes the next header byte of the current frame.
func (s *wsSock) header(c byte) {
	s.got++
	switch {
	case s.got == 1:
		s.b0, s.need, s.left = c, 2, 0
	case s.got == 2:
		s.need = 2
		if c&0x80 != 0 {
			s.need += 4 // masking key
		}
		switch l := c & 0x7f; l {
		case 126:
			s.ext = 2
		case 127:
			s.ext = 8
		default:
			s.ext, s.left = 0, uint64(l)
		}
		s.need += s.ext
	case s.got <= 2+s.ext:
		s.left = s.left<<8 | uint64(c)
	}
}

// drained reports whether gorilla holds no bytes it has not returned.
func (s *wsSock) drained() bool { return s.ready == 0 && s.tail == 0 }

// returned records that gorilla returned a message.
func (s *wsSock) returned() {
	if s.ready > 0 {
		s.ready--
	}
}

// wait blocks until the socket is readable (data, end of stream or an
// error), the connection is closed or its read deadline passes. It is
// called only when drained: what gorilla has buffered is never stranded.
func (s *wsSock) wait() error {
	return s.raw.Read(readable)
}

// Control frame opcodes and the largest control frame a client may send:
// header, masking key and at most 125 bytes of payload.
const (
	opPing          = websocket.PingMessage
	opPong          = websocket.PongMessage
	maxControlFrame = 2 + 4 + 125
)

// control reads a ping or pong waiting at the head of the socket (only
// when drained: the socket's next byte starts a frame). It returns the
// opcode of the frame it read, or 0 when the socket holds anything else
// (data, a close frame, an incomplete or invalid frame, the end of the
// stream): gorilla reads that.
func (s *wsSock) control(onPing func(payload []byte) error, onPong func()) (int, error) {
	var buf [maxControlFrame]byte
	n, err := s.peek(buf[:])
	if err != nil || n < 2 {
		return 0, nil
	}
	b0, b1 := buf[0], buf[1]
	op := int(b0 & 0x0f)
	if b0&0xf0 != 0x80 || (op != opPing && op != opPong) || b1&0x80 == 0 {
		return 0, nil // not a final, masked ping or pong without reserved bits
	}
	size := 6 + int(b1&0x7f)
	if size > n {
		return 0, nil // incomplete, or longer than a control frame may be
	}
	got, err := s.recv(buf[:size])
	if err != nil {
		return 0, fmt.Errorf("read control frame: %w", err)
	}
	if got != size {
		return 0, fmt.Errorf("read control frame: %d of %d bytes", got, size)
	}
	if op == opPong {
		onPong()
		return op, nil
	}
	payload := buf[6:size]
	for i := range payload {
		payload[i] ^= buf[2+i%4]
	}
	return op, onPing(payload)
}

// peek copies what the socket holds, up to len(b) bytes, without taking it.
func (s *wsSock) peek(b []byte) (int, error) { return s.onFD(peekFD, b) }

// recv takes len(b) bytes the socket was seen to hold.
func (s *wsSock) recv(b []byte) (int, error) { return s.onFD(recvFD, b) }

// onFD runs a system call on the socket's descriptor.
func (s *wsSock) onFD(call func(fd uintptr, b []byte) (int, error), b []byte) (int, error) {
	var n int
	var serr error
	if err := s.raw.Control(func(fd uintptr) { n, serr = call(fd, b) }); err != nil {
		return 0, err
	}
	return n, serr
}

// sockHijacker hands gorilla the hijacked connection wrapped in a wsSock
// when it is plain TCP.
type sockHijacker struct {
	http.ResponseWriter
	sock *wsSock
}

// Hijack takes over the connection.
func (h *sockHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	if s := newWSSock(conn); s != nil {
		h.sock = s
		return s, brw, nil
	}
	return conn, brw, nil
}

// Unwrap lets http.ResponseController reach the writer underneath.
func (h *sockHijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }
