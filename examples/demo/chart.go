package main

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// writeChart draws the database load of both runs over time, to path (.png or .svg), and
// returns its absolute path.
func writeChart(path string, r *report) (string, error) {
	ext := filepath.Ext(path)
	if ext != ".png" && ext != ".svg" {
		return "", fmt.Errorf("chart %q: want a .png or .svg file", path)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Database load, %s requests/s over %s users; at each spike %d readers hit the hot key right after a write",
		thousands(float64(r.opts.rate)), thousands(float64(r.opts.users)), r.opts.stampedeReaders)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "seconds since the run started"
	p.Y.Label.Text = "database queries per second"
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	for _, s := range []struct {
		phase *phaseResult
		color color.RGBA
	}{
		{r.without, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}},
		{r.with, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}},
	} {
		xys := make(plotter.XYs, len(s.phase.Series))
		for i, pt := range s.phase.Series {
			xys[i].X, xys[i].Y = pt.At, pt.QPS
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return "", err
		}
		l.Color = s.color
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(s.phase.name(), l)
	}
	p.Legend.Top = true
	if err := p.Save(10*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return "", err
	}
	return filepath.Abs(path)
}
