package transport

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// MaskedFrame lets the external tests encode client frames too.
var MaskedFrame = clientFrame

// clientFrame encodes a client frame (masked, as RFC 6455 requires).
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := []byte{0x12, 0x34, 0x56, 0x78}
	b = append(b, key...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// However the reads split the stream, the socket knows how many complete
// messages passed through and whether anything follows the last one:
// control frames and the first fragments of a message do not complete one.
func TestWSSockFollowsMessages(t *testing.T) {
	type part struct {
		frame    []byte
		complete bool // a message is complete at the end of this frame
	}
	parts := []part{
		{clientFrame(true, 1, []byte(`{"type":"a"}`)), true},
		{clientFrame(true, opPing, []byte("ping")), false},
		{clientFrame(false, 1, []byte(`{"type":`)), false},
		{clientFrame(true, opPong, nil), false},
		{clientFrame(true, 0, []byte(`"b"}`)), true},
		{clientFrame(true, 2, bytes.Repeat([]byte{'x'}, 126)), true},
		{clientFrame(true, 1, bytes.Repeat([]byte{' '}, 300)), true},
		{clientFrame(true, 1, bytes.Repeat([]byte{' '}, 70000)), true},
		{clientFrame(true, 1, nil), true},
		{clientFrame(true, 8, []byte{0x03, 0xe8}), false},
	}
	var stream []byte
	var ends []int // stream offsets at which a message is complete
	for _, p := range parts {
		stream = append(stream, p.frame...)
		if p.complete {
			ends = append(ends, len(stream))
		}
	}
	for _, chunk := range []int{1, 2, 3, 5, 7, 14, 512, 4096, len(stream)} {
		s := &wsSock{}
		for off := 0; off < len(stream); off += chunk {
			end := min(off+chunk, len(stream))
			s.follow(stream[off:end])
			want, last := 0, 0
			for _, e := range ends {
				if e <= end {
					want++
					last = e
				}
			}
			require.Equal(t, want, s.ready, "chunk %d, after %d bytes", chunk, end)
			require.Equal(t, end-last, s.tail, "chunk %d, after %d bytes", chunk, end)
		}
		for range ends {
			s.returned()
		}
		// The close frame follows the last message: it is still unread.
		assert.False(t, s.drained(), "chunk %d", chunk)
	}
	s := &wsSock{}
	s.follow(clientFrame(true, 1, []byte("{}")))
	assert.False(t, s.drained(), "a message read but not returned")
	s.returned()
	assert.True(t, s.drained())
}

// tcpPair returns the two ends of a loopback TCP connection, the server's
// wrapped in a wsSock.
func tcpPair(t *testing.T) (*wsSock, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	server, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { _ = server.Close() })
	s := newWSSock(server)
	require.NotNil(t, s)
	return s, client
}

// write writes b and waits until the socket is readable.
func write(t *testing.T, s *wsSock, client net.Conn, b []byte) {
	t.Helper()
	_, err := client.Write(b)
	require.NoError(t, err)
	require.NoError(t, s.SetReadDeadline(time.Now().Add(10*time.Second)))
	require.NoError(t, s.wait())
}

// Pings and pongs at the head of the socket are read without gorilla: a
// ping's payload is unmasked for the answer. Anything else is left for
// gorilla to read, untouched.
func TestWSSockReadsControlFramesAtTheHead(t *testing.T) {
	s, client := tcpPair(t)
	var pinged []string
	pongs := 0
	onPing := func(p []byte) error { pinged = append(pinged, string(p)); return nil }
	onPong := func() { pongs++ }

	write(t, s, client, append(clientFrame(true, opPong, []byte("x")), clientFrame(true, opPing, []byte("hello"))...))
	op, err := s.control(onPing, onPong)
	require.NoError(t, err)
	assert.Equal(t, opPong, op)
	op, err = s.control(onPing, onPong)
	require.NoError(t, err)
	assert.Equal(t, opPing, op)
	assert.Equal(t, []string{"hello"}, pinged)
	assert.Equal(t, 1, pongs)

	// A data frame, a close frame, an unmasked pong, a pong with a reserved
	// bit and an incomplete ping are left alone.
	for _, b := range [][]byte{
		clientFrame(true, 1, []byte(`{}`)),
		clientFrame(true, 8, []byte{0x03, 0xe8}),
		{0x8a, 0x00},
		{0xca, 0x80, 1, 2, 3, 4},
		clientFrame(true, opPing, []byte("hello"))[:8],
	} {
		write(t, s, client, b)
		op, err := s.control(onPing, onPong)
		require.NoError(t, err)
		assert.Zero(t, op, "% x", b)
		got := make([]byte, len(b))
		require.NoError(t, s.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err = s.TCPConn.Read(got)
		require.NoError(t, err)
		assert.Equal(t, b, got, "left on the socket")
	}
	assert.Equal(t, 1, pongs)

	// The end of the stream wakes the waiter and is left for gorilla.
	require.NoError(t, client.Close())
	require.NoError(t, s.wait())
	op, err = s.control(onPing, onPong)
	require.NoError(t, err)
	assert.Zero(t, op)
}

// A connection that is not plain TCP gets no wsSock: its reader waits in
// gorilla's read path.
func TestWSSockOnlyForTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.Nil(t, newWSSock(a))
}

// Closing the connection or passing its read deadline ends a wait.
func TestWSSockWaitEnds(t *testing.T) {
	s, _ := tcpPair(t)
	require.NoError(t, s.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	require.Error(t, s.wait(), "deadline")
	require.NoError(t, s.SetReadDeadline(time.Time{}))
	done := make(chan error, 1)
	go func() { done <- s.wait() }()
	require.NoError(t, s.Close())
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("wait did not end when the connection closed")
	}
}
