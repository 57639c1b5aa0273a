// Package faultproxy is a TCP proxy for tests that injects network faults between a client and
// a server: latency on every byte in both directions, a blackhole that holds all traffic until
// it is lifted, and dropped connections. Byte order within a connection is always kept, so a
// fault never corrupts a protocol stream: it only delays it or ends it.
package faultproxy

import (
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Proxy forwards every connection accepted on its own loopback port to an upstream address.
// The zero value is not usable; use New.
type Proxy struct {
	ln       net.Listener
	upstream string

	mu        sync.Mutex
	conns     map[*pair]struct{}
	latency   time.Duration
	jitter    time.Duration
	share     float64       // the share of connections the latency applies to
	blackhole chan struct{} // closed while traffic flows; open (blocking) during a blackhole
	closed    bool

	wg sync.WaitGroup
}

// pair is one proxied connection: the client side and the upstream side.
type pair struct {
	client, server net.Conn
	rank           float64 // in [0, 1): the latency applies while rank < share
	once           sync.Once
	done           chan struct{} // closed with the pair
}

func (p *pair) close() {
	p.once.Do(func() {
		close(p.done)
		p.client.Close()
		p.server.Close()
	})
}

// New starts a proxy to upstream on a free loopback port.
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	flowing := make(chan struct{})
	close(flowing)
	p := &Proxy{ln: ln, upstream: upstream, conns: make(map[*pair]struct{}), blackhole: flowing, share: 1}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address: point the client here instead of upstream.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is the address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.upstream }

// SetLatency delays every chunk of bytes, in each direction, by d plus a random part of
// jitter, on the share of connections SetSlowShare chose (all by default). Chunks of one
// direction of one connection are never reordered.
func (p *Proxy) SetLatency(d, jitter time.Duration) {
	p.mu.Lock()
	p.latency, p.jitter = d, jitter
	p.mu.Unlock()
}

// SetSlowShare applies the latency to a share f in [0, 1] of the connections (each connection
// draws its rank once, so the same ones stay slow) and none to the others: a client's pool
// then holds slow and fast connections at once, and requests sent in one order may land in
// another.
func (p *Proxy) SetSlowShare(f float64) {
	p.mu.Lock()
	p.share = f
	p.mu.Unlock()
}

// Blackhole holds all traffic, in both directions and on new connections too, until it is
// lifted: the client sees a server that accepts and never answers. Held bytes are delivered
// when it is lifted.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.blackhole: // flowing
		if on {
			p.blackhole = make(chan struct{})
		}
	default:
		if !on {
			close(p.blackhole)
		}
	}
}

// DropAll closes every open connection, on both sides. New connections are accepted as usual.
// It returns how many were closed.
func (p *Proxy) DropAll() int {
	p.mu.Lock()
	ps := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		ps = append(ps, c)
	}
	p.mu.Unlock()
	for _, c := range ps {
		c.close()
	}
	return len(ps)
}

// Conns returns the number of open connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops accepting, closes every connection and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	select {
	case <-p.blackhole:
	default:
		close(p.blackhole)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.DropAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		pr := &pair{client: c, server: s, rank: rand.Float64(), done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pr.close()
			return
		}
		p.conns[pr] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(pr, c, s)
		go p.pipe(pr, s, c)
	}
}

// chunk is bytes read from one side, due on the other side at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies from src to dst through a delay line, until either side fails; then it closes
// the pair.
func (p *Proxy) pipe(pr *pair, src, dst net.Conn) {
	defer p.wg.Done()
	line := make(chan chunk, 64)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		for ch := range line {
			if d := time.Until(ch.due); d > 0 {
				timer.Reset(d)
				<-timer.C
			}
			if _, err := dst.Write(ch.b); err != nil {
				pr.close()
				for range line { // drain so the reader never blocks on a dead writer
				}
				return
			}
		}
	}()
	defer func() {
		close(line)
		<-writerDone
		pr.close()
		p.mu.Lock()
		delete(p.conns, pr)
		p.mu.Unlock()
	}()
	var last time.Time
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate, lat, jit := p.blackhole, p.latency, p.jitter
			if pr.rank >= p.share {
				lat, jit = 0, 0
			}
			p.mu.Unlock()
			select {
			case <-gate: // held while blackholed
			case <-pr.done:
				return
			}
			if jit > 0 {
				lat += rand.N(jit)
			}
			due := time.Now().Add(lat)
			if due.Before(last) {
				due = last // keep the stream in order
			}
			last = due
			line <- chunk{b: buf[:n], due: due}
		}
		if err != nil { // EOF, a reset or a closed side: either way the pair is done
			return
		}
	}
}
