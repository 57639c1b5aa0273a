package bench

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMakeBenchRunsAll checks that `make bench` runs every benchmark of this package: each
// Benchmark function matches exactly one -bench pattern of the Makefile's bench target.
func TestMakeBenchRunsAll(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	_, target, ok := strings.Cut(string(mk), "\nbench:")
	if !ok {
		t.Fatal("no bench target in ../Makefile")
	}
	if end := strings.Index(target, "\n\n"); end >= 0 {
		target = target[:end]
	}
	var patterns []*regexp.Regexp
	for _, m := range regexp.MustCompile(`-bench '([^']+)'`).FindAllStringSubmatch(target, -1) {
		patterns = append(patterns, regexp.MustCompile(strings.ReplaceAll(m[1], "$$", "$")))
	}
	if len(patterns) == 0 {
		t.Fatal("no -bench pattern in the bench target")
	}
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range file.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && fn.Recv == nil && strings.HasPrefix(fn.Name.Name, "Benchmark") {
				names = append(names, fn.Name.Name)
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("no Benchmark functions found")
	}
	for _, name := range names {
		var matched []string
		for _, p := range patterns {
			if p.MatchString(name) {
				matched = append(matched, p.String())
			}
		}
		if len(matched) != 1 {
			t.Errorf("%s matches %d -bench patterns of `make bench` %q, want exactly 1", name, len(matched), matched)
		}
	}
}
