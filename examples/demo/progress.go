package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progressBar draws one line per run on a terminal, redrawn in place:
//
//	with cache     [##########··········]  50%  10.0s  db 164 q/s
//
// A nil *progressBar draws nothing.
type progressBar struct {
	w     io.Writer
	label string
	total time.Duration
	tty   bool
}

func newProgressBar(w io.Writer, label string, total time.Duration) *progressBar {
	if w == nil {
		return nil
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil {
			tty = st.Mode()&os.ModeCharDevice != 0
		}
	}
	b := &progressBar{w: w, label: label, total: total, tty: tty}
	if !tty {
		fmt.Fprintf(w, "%-14s running for %v ...\n", label, total)
	}
	return b
}

func (b *progressBar) update(elapsed time.Duration, dbQPS float64) {
	if b == nil || !b.tty {
		return
	}
	const width = 30
	frac := min(float64(elapsed)/float64(b.total), 1)
	n := int(frac * width)
	fmt.Fprintf(b.w, "\r%-14s [%s%s] %3.0f%%  %5.1fs  db %6.0f q/s ", b.label,
		strings.Repeat("#", n), strings.Repeat("·", width-n), 100*frac, elapsed.Seconds(), dbQPS)
}

func (b *progressBar) done() {
	if b == nil {
		return
	}
	if b.tty {
		fmt.Fprintf(b.w, "\r%-14s [%s] done%s\n", b.label, strings.Repeat("#", 30), strings.Repeat(" ", 30))
		return
	}
	fmt.Fprintf(b.w, "%-14s done\n", b.label)
}
