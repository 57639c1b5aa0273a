// Command benchtable turns benchstat's CSV output (one input file) into markdown tables, one
// per benchmark, one row per case, one column per unit:
//
//	go tool benchstat -format csv bench.out | go run ./cmd/benchtable
package main

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// table is one benchmark's results: cases in order of first appearance, values by unit.
type table struct {
	name  string
	cases []string
	units []string
	cells map[string]map[string]string // case -> unit -> "value ± CI"
}

var procs = regexp.MustCompile(`-\d+$`) // the GOMAXPROCS suffix

func main() {
	tables, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	for _, t := range tables {
		t.print(os.Stdout)
	}
}

func parse(r io.Reader) ([]*table, error) {
	var tables []*table
	byName := map[string]*table{}
	unit := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || !strings.Contains(line, ",") {
			continue // blank lines between sections, and goos:/cpu: lines
		}
		rec, err := csv.NewReader(strings.NewReader(line)).Read()
		if err != nil || len(rec) < 2 {
			continue
		}
		switch {
		case rec[0] == "" && len(rec) >= 3 && rec[2] == "CI":
			unit = rec[1]
			continue
		case rec[0] == "" || rec[0] == "geomean" || unit == "":
			continue
		}
		full := procs.ReplaceAllString(rec[0], "")
		bench, cse, _ := strings.Cut(full, "/")
		t := byName[bench]
		if t == nil {
			t = &table{name: bench, cells: map[string]map[string]string{}}
			byName[bench] = t
			tables = append(tables, t)
		}
		if t.cells[cse] == nil {
			t.cells[cse] = map[string]string{}
			t.cases = append(t.cases, cse)
		}
		if !slices.Contains(t.units, unit) {
			t.units = append(t.units, unit)
		}
		ci := ""
		if len(rec) >= 3 && rec[2] != "" && rec[2] != "∞" {
			ci = " ± " + rec[2]
		}
		t.cells[cse][unit] = format(rec[1], unit) + ci
	}
	return tables, sc.Err()
}

func (t *table) print(w io.Writer) {
	fmt.Fprintf(w, "\n**%s**\n\n| case |", t.name)
	for _, u := range t.units {
		fmt.Fprintf(w, " %s |", heading(u))
	}
	fmt.Fprint(w, "\n|---|")
	for range t.units {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, c := range t.cases {
		fmt.Fprintf(w, "| %s |", c)
		for _, u := range t.units {
			fmt.Fprintf(w, " %s |", t.cells[c][u])
		}
		fmt.Fprintln(w)
	}
}

func heading(unit string) string {
	if unit == "sec/op" {
		return "time/op"
	}
	return unit
}

// format prints a value in its unit's natural scale: 1.23µs, 640 B, 15, 10334. Benchstat
// turns the custom units in ns (p99-ns, encode-ns/op) into seconds (p99-sec, encode-sec/op):
// they are times too.
func format(v, unit string) string {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return v
	}
	switch {
	case unit == "sec/op" || strings.HasSuffix(unit, "-sec") || strings.HasSuffix(unit, "-sec/op"):
		switch {
		case f >= 1:
			return strconv.FormatFloat(f, 'f', 2, 64) + "s"
		case f >= 1e-3:
			return strconv.FormatFloat(f*1e3, 'f', 2, 64) + "ms"
		case f >= 1e-6:
			return strconv.FormatFloat(f*1e6, 'f', 2, 64) + "µs"
		default:
			return strconv.FormatFloat(f*1e9, 'f', 1, 64) + "ns"
		}
	case unit == "B/op":
		return strconv.FormatFloat(f, 'f', 0, 64) + " B"
	case f >= 1e4 || f <= -1e4:
		return strconv.FormatFloat(f, 'f', 0, 64) // sizes and counts: every digit, no exponent
	default:
		return strconv.FormatFloat(f, 'g', 4, 64)
	}
}
