// Command progress runs a command for make test and keeps its output legible: a line at least
// every 20 seconds, whatever the command is doing.
//
//	progress LABEL -- go vet ./...         relays the output, and says "LABEL: still running
//	                                       (40s)" after 20 s of silence
//	progress -json LABEL -- go test -json  reads go test's JSON events and prints each
//	                                       package as it starts and ends, each top-level test
//	                                       that fails (with all its output) or took 2 s or
//	                                       more, the linearizability summary lines, and in
//	                                       silences which tests are running and for how long
//
// It exits with the command's status. It is a tool of the Makefile, not part of the library.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"
)

const quiet = 20 * time.Second

func main() {
	args := os.Args[1:]
	jsonMode := len(args) > 0 && args[0] == "-json"
	if jsonMode {
		args = args[1:]
	}
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintln(os.Stderr, "usage: progress [-json] LABEL -- command [args...]")
		os.Exit(2)
	}
	label, argv := args[0], args[2:]
	os.Exit(run(label, argv, jsonMode))
}

// printer serialises output and remembers when the last line went out.
type printer struct {
	mu    sync.Mutex
	last  time.Time
	start time.Time
}

func (p *printer) println(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Printf(format+"\n", a...)
	p.last = time.Now()
}

func (p *printer) write(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	os.Stdout.Write(b)
	p.last = time.Now()
}

func (p *printer) silentFor() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Since(p.last)
}

func run(label string, argv []string, jsonMode bool) int {
	pr := &printer{last: time.Now(), start: time.Now()}
	cmd := exec.Command(argv[0], argv[1:]...) //nolint:gosec // G204: running the given command is its job
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "progress:", err)
		return 2
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "progress:", err)
		return 2
	}
	var st *state
	if jsonMode {
		st = newState(pr)
	}
	done := make(chan struct{})
	go func() { // the heartbeat
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if pr.silentFor() < quiet {
					continue
				}
				what := "still running"
				if st != nil {
					what = st.running()
				}
				pr.println("%s: %s (%s so far)", label, what, time.Since(pr.start).Round(time.Second))
			}
		}
	}()
	if jsonMode {
		st.read(out)
	} else {
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadBytes('\n')
			if len(line) > 0 {
				pr.write(line)
			}
			if err != nil {
				break
			}
		}
	}
	err = cmd.Wait()
	close(done)
	code := 0
	if err != nil {
		code = 1
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			code = ee.ExitCode()
		}
	}
	if st != nil {
		st.summary(code)
	}
	pr.println("%s: done in %s", label, time.Since(pr.start).Round(time.Second))
	return code
}

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Elapsed    float64
	Output     string
}

type state struct {
	pr        *printer
	output    map[string][]string  // by package + "\x00" + top-level test: its output lines
	active    map[string]time.Time // top-level tests and packages running, since when
	announced map[string]bool
	passed    int
	failed    []string
	skipped   int
}

func newState(pr *printer) *state {
	return &state{pr: pr, output: map[string][]string{}, active: map[string]time.Time{}, announced: map[string]bool{}}
}

func short(pkg string) string {
	const mod = "github.com/cacheaside/cacheaside"
	switch {
	case pkg == mod:
		return "."
	case strings.HasPrefix(pkg, mod+"/"):
		return "./" + strings.TrimPrefix(pkg, mod+"/")
	}
	return pkg
}

func topLevel(test string) string {
	if i := strings.IndexByte(test, '/'); i >= 0 {
		return test[:i]
	}
	return test
}

func (s *state) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			s.pr.println("%s", sc.Text()) // not an event: a build error, say
			continue
		}
		s.handle(e)
	}
}

func (s *state) handle(e event) {
	pkg := short(e.Package)
	switch e.Action {
	case "build-output":
		s.pr.println("%s", strings.TrimRight(e.Output, "\n"))
		return
	case "build-fail":
		s.pr.println("BUILD FAILED %s", short(e.ImportPath))
		return
	}
	if e.Test == "" {
		switch e.Action {
		case "start":
			s.active[pkg] = time.Now()
		case "output":
			out := strings.TrimRight(e.Output, "\n")
			// A package's own lines (a panic, a TestMain message, FAIL): keep what matters.
			if !strings.HasPrefix(out, "PASS") && !strings.HasPrefix(out, "?") && !strings.HasPrefix(out, "ok ") &&
				!strings.HasPrefix(out, "=== ") && out != "" && !strings.HasPrefix(out, "FAIL\t") {
				s.pr.println("  %s: %s", pkg, out)
			}
		case "pass", "fail", "skip":
			delete(s.active, pkg)
			word := map[string]string{"pass": "ok", "fail": "FAIL", "skip": "no tests"}[e.Action]
			if e.Action == "fail" {
				s.failed = append(s.failed, pkg)
			}
			s.pr.println("  %-36s %s (%.1fs)", pkg, word, e.Elapsed)
		}
		return
	}
	top := topLevel(e.Test)
	id := pkg + "\x00" + top
	switch e.Action {
	case "run":
		if !s.announced[pkg] {
			s.announced[pkg] = true
			s.pr.println("  %-36s running its tests", pkg)
		}
		if top == e.Test {
			s.active[pkg+" "+top] = time.Now()
		}
	case "output":
		s.output[id] = append(s.output[id], e.Output)
		// The linearizability summaries and the self-checks say what they found as they go.
		if i := strings.Index(e.Output, "self-check "); i >= 0 {
			s.pr.println("    %s", strings.TrimSpace(e.Output[i:]))
		} else if i := strings.Index(e.Output, "linz "); i >= 0 && strings.Contains(e.Output, "violations=") {
			s.pr.println("    %s", strings.TrimSpace(e.Output[i:]))
		}
	case "pass", "skip", "fail":
		if top != e.Test {
			return
		}
		delete(s.active, pkg+" "+top)
		switch e.Action {
		case "pass":
			s.passed++
			if e.Elapsed >= 2 {
				s.pr.println("    %-50s ok (%.1fs)", e.Test, e.Elapsed)
			}
		case "skip":
			s.skipped++
		case "fail":
			s.failed = append(s.failed, pkg+" "+e.Test)
			s.pr.println("--- FAIL: %s %s (%.1fs); its output:", pkg, e.Test, e.Elapsed)
			for _, l := range s.output[id] {
				s.pr.write([]byte("    | " + l))
			}
		}
		delete(s.output, id)
	}
}

// running says which tests are running, longest first.
func (s *state) running() string {
	type r struct {
		name string
		age  time.Duration
	}
	var rs []r
	for name, since := range s.active {
		if strings.Contains(name, " ") { // a test, not a package
			rs = append(rs, r{name, time.Since(since).Round(time.Second)})
		}
	}
	if len(rs) == 0 {
		if len(s.active) == 0 {
			return fmt.Sprintf("compiling (%d tests passed so far)", s.passed)
		}
		return "starting a test binary"
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].age > rs[j].age })
	var parts []string
	for i, x := range rs {
		if i == 3 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s for %s", x.name, x.age))
	}
	return fmt.Sprintf("%d tests passed; running %s", s.passed, strings.Join(parts, ", "))
}

func (s *state) summary(code int) {
	if len(s.failed) > 0 {
		s.pr.println("FAILED: %s", strings.Join(s.failed, "; "))
	} else if code != 0 {
		s.pr.println("go test exited with status %d (see above)", code)
	}
	s.pr.println("%d top-level tests passed, %d skipped, %d failed", s.passed, s.skipped, len(s.failed))
}
