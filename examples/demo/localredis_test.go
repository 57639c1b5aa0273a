package main

import (
	"net"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
)

func TestChooseRedis(t *testing.T) {
	o := defaultOptions()
	o.memoryCache = true
	chooseRedis(&o)
	if o.redisURL != "" || !strings.Contains(o.redisNote, "MemoryStore") {
		t.Errorf("-memory-cache: url %q, note %q", o.redisURL, o.redisNote)
	}
	o = defaultOptions()
	o.embeddedRedis = true
	chooseRedis(&o)
	if o.redisURL != "" || !strings.Contains(o.redisNote, "miniredis") {
		t.Errorf("-embedded-redis: url %q, note %q", o.redisURL, o.redisNote)
	}

	mr := miniredis.RunT(t)
	if !pings(mr.Addr()) {
		t.Error("a Redis that answers does not ping")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if pings(addr) {
		t.Error("a closed port pings")
	}
}
