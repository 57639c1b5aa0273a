package cacheaside

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestBroadcastMessageFormat(t *testing.T) {
	keys := []string{"a", "", "user:42", string([]byte{0, 0xff, '\n'}), strings.Repeat("x", 300)}
	sender, all, got, ok := decodeMsg(encodeKeysMsg("me:", keys))
	if !ok || all || sender != "me:" || !slices.Equal(got, keys) {
		t.Fatalf("keys message: %q %v %q %v", sender, all, got, ok)
	}
	sender, all, got, ok = decodeMsg(encodeAllMsg("me:", "user:*"))
	if !ok || !all || sender != "me:" || got != nil {
		t.Fatalf("pattern message: %q %v %q %v", sender, all, got, ok)
	}
	good := encodeKeysMsg("me:", []string{"abc"})
	for _, bad := range [][]byte{nil, {}, {msgVersion}, {2, msgKeys, 0}, {msgVersion, 'z', 0}, good[:len(good)-1], append(append([]byte{}, good...), 9)} {
		if _, _, _, ok := decodeMsg(bad); ok {
			t.Fatalf("%q decoded", bad)
		}
	}
}

// TestLocalDeliveryDelay measures how long after an Invalidate on one instance another
// instance has dropped the key from its L1. It asserts nothing about time (beyond a bound that
// catches a hang): it logs the distribution.
func TestLocalDeliveryDelay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[int64](t, b, 2, l1Opts(slowMachine...)...)
		a, other := cs[0], cs[1]
		waitLive(t, a, other)
		applied := make(chan time.Time, 1000)
		f := func() { applied <- time.Now() }
		other.l1.onMessage.Store(&f)
		load := func(context.Context) (int64, error) { return 1, nil }
		const n = 200
		fromCall := make([]time.Duration, 0, n)
		fromReturn := make([]time.Duration, 0, n)
		for i := range n {
			k := fmt.Sprintf("k%d", i%10)
			if _, err := other.GetOrLoad(bg(), k, load); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := a.Invalidate(bg(), k); err != nil {
				t.Fatal(err)
			}
			ret := time.Now()
			var at time.Time
			select {
			case at = <-applied:
			case <-time.After(20 * time.Second):
				t.Fatal("an invalidation was not delivered within 20s")
			}
			fromCall = append(fromCall, at.Sub(start))
			fromReturn = append(fromReturn, max(0, at.Sub(ret)))
		}
		q := func(ds []time.Duration) string {
			slices.Sort(ds)
			return fmt.Sprintf("p50 %v, p99 %v, max %v", ds[len(ds)/2], ds[len(ds)*99/100], ds[len(ds)-1])
		}
		t.Logf("%s: L1 drop on another instance, %d invalidations: from the Invalidate call: %s; after it returned: %s",
			b.name, n, q(fromCall), q(fromReturn))
	})
}

// namedClient is a client of b's server whose connections carry name, so that a test can find
// and kill its own connections on the shared server (and only those).
func namedClient(t testing.TB, b backend, name string) redis.UniversalClient {
	t.Helper()
	var c redis.UniversalClient
	if b.cluster {
		needServer(t, "Redis Cluster", clusterAddrs()[0])
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: clusterAddrs(), ClientName: name})
	} else {
		needServer(t, "Redis", redisAddr())
		c = redis.NewClient(&redis.Options{Addr: redisAddr(), ClientName: name})
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// killPubSub kills the pub/sub connections of the clients named name, on every node, and
// returns how many it killed.
func killPubSub(t testing.TB, admin redis.UniversalClient, name string) int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	kill := func(ctx context.Context, c *redis.Client) error {
		list, err := c.ClientList(ctx).Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(list, "\n") {
			f := map[string]string{}
			for _, kv := range strings.Fields(line) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					f[k] = v
				}
			}
			if f["name"] != name || (!strings.Contains(f["flags"], "P") && (f["sub"] == "" || f["sub"] == "0")) {
				continue
			}
			if err := c.Do(ctx, "CLIENT", "KILL", "ID", f["id"]).Err(); err == nil {
				mu.Lock()
				n++
				mu.Unlock()
			}
		}
		return nil
	}
	var err error
	switch a := admin.(type) {
	case *redis.ClusterClient:
		err = a.ForEachShard(bg(), kill)
	case *redis.Client:
		err = kill(bg(), a)
	default:
		t.Fatalf("unexpected admin client %T", admin)
	}
	if err != nil {
		t.Errorf("killing pub/sub connections: %v", err)
	}
	return n
}

// Killing the subscribers' connections while writes go on: an instance that was cut off
// flushes its L1 when it notices and again when it is subscribed again, so after reconnecting
// no instance serves a value invalidated while it was cut off (the L1 TTL is an hour).
func TestLocalSubscriberKilledWhileWritesGoOn(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		var id [4]byte
		_, _ = rand.Read(id[:])
		names := make([]string, 3)
		cs := make([]*Cache[int64], 3)
		received := make([]atomic.Int64, 3)
		for i := range cs {
			names[i] = fmt.Sprintf("cacheaside-test-l1-kill-%x-%d", id, i)
			cs[i] = newTestCache[int64](t, NewRedisStore(namedClient(t, b, names[i])), l1Opts(append([]Option{WithPrefix(prefix)}, slowMachine...)...)...)
			f := func() { received[i].Add(1) }
			cs[i].l1.onMessage.Store(&f)
		}
		waitLive(t, cs...)
		admin := b.client(t)
		var kills atomic.Int64
		during := func(stop <-chan struct{}) {
			for {
				select {
				case <-stop:
					return
				case <-time.After(150 * time.Millisecond):
				}
				for _, name := range names {
					kills.Add(int64(killPubSub(t, admin, name)))
				}
			}
		}
		writes := coherenceRun(t, cs, 8, 3*time.Second, during)
		var total, missed int64
		for _, w := range writes {
			total += w
		}
		for i := range cs {
			m := total - writes[i] - received[i].Load()
			missed += m
			t.Logf("instance %d: %d invalidations by the others, %d received, %d missed", i, total-writes[i], received[i].Load(), m)
		}
		t.Logf("%d pub/sub connections killed", kills.Load())
		if kills.Load() == 0 {
			t.Fatal("no pub/sub connection was killed: the test did not run its case")
		}
		if missed == 0 {
			t.Fatal("no invalidation was missed: the test did not run its case")
		}
	})
}

// freezeProxy forwards TCP connections to a server and can stop forwarding without closing
// them: a hung server or a network partition, as a client sees it.
type freezeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	closed bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezeProxy(t testing.TB, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			in.Close()
			out.Close()
			return
		}
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *freezeProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.frozen && !p.closed {
				p.cond.Wait()
			}
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *freezeProxy) freeze() { p.set(true) }
func (p *freezeProxy) thaw()   { p.set(false) }

func (p *freezeProxy) set(frozen bool) {
	p.mu.Lock()
	p.frozen = frozen
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *freezeProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	conns := p.conns
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}

// A subscriber connection that stops answering without being closed (a hung server, a
// partition) is noticed by the PING the subscriber sends when idle: the L1 is flushed and
// bypassed until a new subscription is confirmed, so an invalidation sent meanwhile is not
// missed.
func TestLocalDeadSubscriberConnectionIsNoticed(t *testing.T) {
	needServer(t, "Redis", redisAddr())
	p := newFreezeProxy(t, redisAddr())
	proxied := redis.NewClient(&redis.Options{Addr: p.addr()})
	t.Cleanup(func() { proxied.Close() })
	direct := redis.NewClient(&redis.Options{Addr: redisAddr()})
	t.Cleanup(func() { direct.Close() })

	prefix := testPrefix(t)
	cut := NewRedisStore(proxied)
	cut.pubsub = pubsubTiming{idle: 100 * time.Millisecond, pongWait: 300 * time.Millisecond, backoffMin: 20 * time.Millisecond}
	b := newTestCache[int64](t, cut, l1Opts(WithPrefix(prefix))...)
	a := newTestCache[int64](t, NewRedisStore(direct), l1Opts(WithPrefix(prefix))...)
	waitLive(t, a, b)

	var sot atomic.Int64
	sot.Store(1)
	load := func(context.Context) (int64, error) { return sot.Load(), nil }
	if v, err := b.GetOrLoad(bg(), "k", load); err != nil || v != 1 {
		t.Fatalf("%d, %v", v, err)
	}
	p.freeze()
	frozen := time.Now()
	sot.Store(2)
	if err := a.Invalidate(bg(), "k"); err != nil { // the message sits in the proxy
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "noticing the dead connection", func() (bool, string) {
		return !b.l1.isLive(), "still live"
	})
	t.Logf("dead subscriber connection noticed after %v (idle 100ms, pong wait 300ms)", time.Since(frozen))
	// Cut off: no L1. The store does not answer either, so the read fails open to the loader.
	if v, err := b.GetOrLoad(bg(), "k", load); err != nil || v != 2 {
		t.Fatalf("cut off: %d, %v; want 2", v, err)
	}
	p.thaw()
	waitLive(t, b)
	if v, err := b.GetOrLoad(bg(), "k", load); err != nil || v != 2 {
		t.Fatalf("after resubscribing: %d, %v; want 2", v, err)
	}
}

// Close stops the subscriber promptly, even while it waits on Redis.
func TestLocalCloseStopsTheSubscriber(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		c, err := New[int](b.newStore(t), l1Opts(WithPrefix(testPrefix(t)))...)
		if err != nil {
			t.Fatal(err)
		}
		waitLive(t, c)
		within(t, 5*time.Second, "Close", func() { c.Close() })
		if _, err := c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil }); !errors.Is(err, ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	})
}

// On a Ring the subscriber goes to the channel's shard and Publish to every shard.
func TestLocalOverRing(t *testing.T) {
	needServer(t, "Redis", redisAddr())
	prefix := testPrefix(t)
	cs := make([]*Cache[int64], 2)
	for i := range cs {
		ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": redisAddr()}})
		t.Cleanup(func() { ring.Close() })
		cs[i] = newTestCache[int64](t, NewRedisStore(ring), l1Opts(WithPrefix(prefix))...)
	}
	waitLive(t, cs...)
	var sot atomic.Int64
	sot.Store(1)
	load := func(context.Context) (int64, error) { return sot.Load(), nil }
	if _, err := cs[1].GetOrLoad(bg(), "k", load); err != nil {
		t.Fatal(err)
	}
	sot.Store(2)
	if err := cs[0].Invalidate(bg(), "k"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the other instance", func() (bool, string) {
		v, err := cs[1].GetOrLoad(bg(), "k", load)
		return err == nil && v == 2, fmt.Sprintf("%d, %v", v, err)
	})
}
