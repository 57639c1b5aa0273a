package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// capture runs f with os.Stdout sent to a pipe and returns what it printed.
func capture(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		var b bytes.Buffer
		_, _ = io.Copy(&b, r)
		done <- b.String()
	}()
	f()
	os.Stdout = old
	w.Close()
	return <-done
}

// A failing test prints all its output, subtests included; a passing quick test prints
// nothing; a slow one prints its line; the linearizability and self-check lines go out as
// they come.
func TestJSONEvents(t *testing.T) {
	events := strings.Join([]string{
		`{"Action":"start","Package":"github.com/cacheaside/cacheaside"}`,
		`{"Action":"run","Package":"github.com/cacheaside/cacheaside","Test":"TestQuick"}`,
		`{"Action":"output","Package":"github.com/cacheaside/cacheaside","Test":"TestQuick","Output":"quiet detail\n"}`,
		`{"Action":"pass","Package":"github.com/cacheaside/cacheaside","Test":"TestQuick","Elapsed":0.1}`,
		`{"Action":"run","Package":"github.com/cacheaside/cacheaside","Test":"TestSlow"}`,
		`{"Action":"output","Package":"github.com/cacheaside/cacheaside","Test":"TestSlow/memory","Output":"    x_test.go:1: linz clean/memory: histories=9 violations=0\n"}`,
		`{"Action":"output","Package":"github.com/cacheaside/cacheaside","Test":"TestSlow/memory","Output":"    x_test.go:2: self-check broken/memory: broken build caught: 3 violations, as required\n"}`,
		`{"Action":"pass","Package":"github.com/cacheaside/cacheaside","Test":"TestSlow","Elapsed":3.5}`,
		`{"Action":"run","Package":"github.com/cacheaside/cacheaside","Test":"TestBad"}`,
		`{"Action":"output","Package":"github.com/cacheaside/cacheaside","Test":"TestBad/sub","Output":"    bad_test.go:9: the reason it failed\n"}`,
		`{"Action":"fail","Package":"github.com/cacheaside/cacheaside","Test":"TestBad/sub","Elapsed":0.2}`,
		`{"Action":"fail","Package":"github.com/cacheaside/cacheaside","Test":"TestBad","Elapsed":0.2}`,
		`{"Action":"fail","Package":"github.com/cacheaside/cacheaside","Elapsed":4}`,
	}, "\n")
	out := capture(t, func() {
		s := newState(&printer{last: time.Now(), start: time.Now()})
		s.read(strings.NewReader(events))
		s.summary(1)
	})
	for _, want := range []string{
		"TestSlow", "ok (3.5s)",
		"linz clean/memory: histories=9 violations=0",
		"self-check broken/memory: broken build caught: 3 violations, as required",
		"--- FAIL: . TestBad", "| " + "    bad_test.go:9: the reason it failed",
		"FAILED: . TestBad; .",
		"2 top-level tests passed, 0 skipped, 2 failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "quiet detail") || strings.Contains(out, "TestQuick") {
		t.Errorf("a quick passing test was printed:\n%s", out)
	}
}

// In a silence, the heartbeat names the tests running, longest first.
func TestRunningNamesTests(t *testing.T) {
	s := newState(&printer{})
	if got := s.running(); !strings.Contains(got, "compiling") {
		t.Errorf("nothing started: %q", got)
	}
	s.active[". TestA"] = time.Now().Add(-30 * time.Second)
	s.active[". TestB"] = time.Now().Add(-5 * time.Second)
	got := s.running()
	if !strings.Contains(got, ". TestA for 30s, . TestB for 5s") {
		t.Errorf("running() = %q", got)
	}
}
