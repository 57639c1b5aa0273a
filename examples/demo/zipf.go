package main

import "math/rand/v2"

// zipf draws user ids 1..n, id 1 the most frequent: a few users get most of the traffic, as
// in most services. One per goroutine (rand.Rand is not safe for concurrent use).
type zipf struct {
	r *rand.Rand
	z *rand.Zipf
}

func newZipf(seed, stream uint64, s float64, n int) *zipf {
	r := rand.New(rand.NewPCG(seed, stream))
	return &zipf{r: r, z: rand.NewZipf(r, s, 1, uint64(n-1))}
}

func (z *zipf) next() int64 { return int64(z.z.Uint64()) + 1 }
