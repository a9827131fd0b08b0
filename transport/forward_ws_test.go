package transport

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// frame encodes an unmasked server frame with a payload of n bytes.
func frame(op byte, n int) []byte {
	b := []byte{0x80 | op}
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, bytes.Repeat([]byte{'x'}, n)...)
}

// TestWSTapFollowsFrameBoundaries: whatever sizes the frames have and
// however the reads split them, the tap knows when the stream is between
// two frames.
func TestWSTapFollowsFrameBoundaries(t *testing.T) {
	var stream []byte
	var ends []int
	for _, n := range []int{0, 5, 125, 126, 300, 70000} {
		stream = append(stream, frame(1, n)...)
		ends = append(ends, len(stream))
	}
	for _, chunk := range []int{1, 2, 3, 7, 64, 4096, len(stream)} {
		tap := &wsTap{}
		isEnd := map[int]bool{0: true}
		for _, e := range ends {
			isEnd[e] = true
		}
		for off := 0; off < len(stream); {
			k := min(chunk, len(stream)-off)
			tap.follow(stream[off : off+k])
			off += k
			assert.Equal(t, isEnd[off], tap.atBoundary(), "chunk %d, offset %d", chunk, off)
		}
	}
}

// TestWSTapSaysGoodbyeBetweenFrames: a tap told to go away ends the
// client's stream with a 1001 close frame after the last whole frame.
func TestWSTapSaysGoodbyeBetweenFrames(t *testing.T) {
	owner, proxy := net.Pipe()
	var ts taps
	tap, err := ts.add(proxy)
	require.NoError(t, err)
	msg := frame(1, 10)
	go func() { _, _ = owner.Write(msg) }()
	buf := make([]byte, 64)
	n, err := io.ReadFull(tap, buf[:len(msg)])
	require.NoError(t, err)
	require.Equal(t, msg, buf[:n])
	ts.closeAll()
	n, err = tap.Read(buf)
	require.NoError(t, err)
	require.Equal(t, closeFrame, buf[:n])
	assert.Equal(t, byte(0x88), buf[0])
	assert.Equal(t, uint16(1001), binary.BigEndian.Uint16(buf[2:4]))
	_, err = tap.Read(buf)
	assert.Error(t, err, "the stream ends after the close frame")
	_ = tap.Close()
	_ = owner.Close()
	_, err = ts.add(proxy)
	assert.Error(t, err, "no new proxied socket while stopping")
}
