package main

import (
	"context"
	"sync"

	"github.com/cacheaside/cacheaside/examples/userservice"
)

// hotKey is the most read user: rank 1 of the Zipf distribution.
const hotKey = 1

// stampede is one synchronized expiry of the hot key. With the workload paused (so that the
// database counters see nothing else), it writes the hot user, which invalidates its cache
// entry, then releases o.stampedeReaders readers on it at once, and returns the database
// reads they caused: the loader calls. Without a cache each reader queries the database;
// with one, the first reader's load is shared by all the others.
func (d *driver) stampede(ctx context.Context, svc *userservice.Service) int64 {
	d.gate.Lock() // waits for the requests in flight
	d.paused.Store(true)
	defer func() {
		d.paused.Store(false)
		d.gate.Unlock()
	}()
	ws := &workerStats{}
	d.put(ctx, hotKey, ws)

	before := svc.Stats()
	release := make(chan struct{})
	var ready, done sync.WaitGroup
	stats := make([]*workerStats, d.o.stampedeReaders)
	for i := range stats {
		stats[i] = &workerStats{}
		ready.Add(1)
		done.Go(func() {
			ready.Done()
			<-release
			d.get(ctx, hotKey, stats[i])
		})
	}
	ready.Wait()
	close(release)
	done.Wait()
	calls := svc.Stats().Sub(before).DBQueries
	d.mu.Lock()
	d.extra = append(d.extra, ws)
	d.extra = append(d.extra, stats...)
	d.mu.Unlock()
	return calls
}
