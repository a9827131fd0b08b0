//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package transport

import "errors"

// canPeek: this platform's reader waits in gorilla's read path.
const canPeek = false

var errNoPeek = errors.New("peeking at a socket is not supported on this platform")

func readable(uintptr) bool { return true }

func peekFD(uintptr, []byte) (int, error) { return 0, errNoPeek }

func recvFD(uintptr, []byte) (int, error) { return 0, errNoPeek }
