//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package transport

import "syscall"

// canPeek: this platform can peek at a socket without taking its bytes.
const canPeek = true

// readable peeks at the socket: false (wait for the poller) while it holds
// nothing, true once it holds data, its end or an error.
func readable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		return true
	}
}

// peekFD copies up to len(b) bytes the socket holds without taking them.
func peekFD(fd uintptr, b []byte) (int, error) {
	return recvFlags(fd, b, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
}

// recvFD takes up to len(b) bytes the socket holds, without waiting.
func recvFD(fd uintptr, b []byte) (int, error) {
	return recvFlags(fd, b, syscall.MSG_DONTWAIT)
}

func recvFlags(fd uintptr, b []byte, flags int) (int, error) {
	for {
		n, _, err := syscall.Recvfrom(int(fd), b, flags)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}
