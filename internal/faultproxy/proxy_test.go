package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echo starts a line echo server and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string) (string, error) {
	t.Helper()
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxyForwardsDelaysHoldsAndDrops(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)

	if got, err := roundTrip(t, c, r, "hello"); err != nil || got != "hello\n" {
		t.Fatalf("round trip: %q, %v", got, err)
	}

	p.SetLatency(30*time.Millisecond, 0)
	start := time.Now()
	if got, err := roundTrip(t, c, r, "slow"); err != nil || got != "slow\n" {
		t.Fatalf("delayed round trip: %q, %v", got, err)
	}
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Fatalf("round trip took %v, want at least two delays of 30ms", d)
	}
	p.SetLatency(0, 0)

	p.Blackhole(true)
	_, _ = c.Write([]byte("held\n"))
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a reply came through the blackhole")
	}
	_ = c.SetReadDeadline(time.Time{})
	p.Blackhole(false)
	// the held line is delivered once the blackhole lifts, in order
	if got, err := r.ReadString('\n'); err != nil || got != "held\n" {
		t.Fatalf("after the blackhole: %q, %v", got, err)
	}

	if n := p.DropAll(); n != 1 {
		t.Fatalf("DropAll closed %d connections, want 1", n)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a dropped connection still reads")
	}

	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(t, c2, bufio.NewReader(c2), "again"); err != nil || got != "again\n" {
		t.Fatalf("new connection after a drop: %q, %v", got, err)
	}
}

func TestProxyCloseDuringBlackhole(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.Blackhole(true)
	_, _ = c.Write([]byte("stuck\n"))
	time.Sleep(20 * time.Millisecond)
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on a blackholed connection")
	}
}

func TestProxySlowShare(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.SetLatency(time.Hour, 0)
	p.SetSlowShare(0) // no connection is slow
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := roundTrip(t, c, bufio.NewReader(c), "fast"); err != nil || got != "fast\n" {
		t.Fatalf("with no slow share: %q, %v", got, err)
	}
}
