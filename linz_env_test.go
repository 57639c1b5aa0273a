package cacheaside

// The stores the linearizability scenarios run on, and the faults they inject into them:
// connections killed with CLIENT KILL (only this test's own clients, found by client name),
// a redis-server of the test's own killed and restarted, and latency, blackholes and dropped
// connections through internal/faultproxy.

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/faultproxy"
	"github.com/redis/go-redis/v9"
)

// linzTarget is one store a scenario runs on: how to build each instance's store (its own
// client, standing for its own process) and the handles its faults act through.
type linzTarget struct {
	name     string
	memory   *MemoryStore
	addrs    []string // the real server addresses (one, or the cluster's masters)
	cluster  bool
	own      *ownRedis                    // a server this test started, or nil
	proxies  map[string]*faultproxy.Proxy // by real address, when the scenario proxies
	clientID string                       // CLIENT SETNAME of every instance's client

	adminOnce sync.Once
	admins    []*redis.Client
	storeErrs atomic.Int64 // errors the instances' stores returned to their caches
}

// linzStores are the stores every scenario may run on: memory, the shared standalone Redis,
// the shared 3-master Cluster, and a redis-server the test starts itself (for restarts).
const (
	storeMemory  = "memory"
	storeRedis   = "redis"
	storeCluster = "cluster"
	storeOwn     = "own-redis"
)

// newLinzTarget prepares store kind for one subtest; proxied puts a fault proxy in front of
// every server.
func newLinzTarget(t testing.TB, kind string, proxied bool) *linzTarget {
	t.Helper()
	var b [6]byte
	_, _ = crand.Read(b[:])
	tg := &linzTarget{name: kind, clientID: "cacheaside-linz-" + hex.EncodeToString(b[:])}
	switch kind {
	case storeMemory:
		tg.memory = NewMemoryStore()
		t.Cleanup(func() { tg.memory.Close() })
		return tg
	case storeRedis:
		needServer(t, "Redis", redisAddr())
		tg.addrs = []string{redisAddr()}
	case storeCluster:
		tg.addrs = clusterAddrs()
		needServer(t, "Redis Cluster", tg.addrs[0])
		tg.cluster = true
	case storeOwn:
		tg.own = startOwnRedis(t)
		tg.addrs = []string{tg.own.addr}
	default:
		t.Fatalf("unknown store %q", kind)
	}
	if proxied {
		tg.proxies = make(map[string]*faultproxy.Proxy)
		for _, a := range tg.addrs {
			p, err := faultproxy.New(a)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			tg.proxies[a] = p
		}
	}
	return tg
}

// dial routes a client's connections through the proxy of their server, if any.
func (tg *linzTarget) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if p := tg.proxies[addr]; p != nil {
		addr = p.Addr()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// newStore returns a store on a client of its own (another process, in effect). The memory
// target returns its one shared store.
func (tg *linzTarget) newStore(t testing.TB) Store {
	t.Helper()
	if tg.memory != nil {
		return tg.memory
	}
	var c redis.UniversalClient
	if tg.cluster {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: tg.addrs, ClientName: tg.clientID, Dialer: tg.dial})
	} else {
		c = redis.NewClient(&redis.Options{Addr: tg.addrs[0], ClientName: tg.clientID, Dialer: tg.dial})
	}
	t.Cleanup(func() { c.Close() })
	return erringStore{Store: NewRedisStore(c), errs: &tg.storeErrs}
}

// admin returns a direct client to each server, for faults and checks. Its connections are
// not named like the instances', so CLIENT KILL never reaches them.
func (tg *linzTarget) admin(t testing.TB) []*redis.Client {
	t.Helper()
	tg.adminOnce.Do(func() {
		tg.admins = make([]*redis.Client, len(tg.addrs))
		for i, a := range tg.addrs {
			c := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1})
			t.Cleanup(func() { c.Close() })
			tg.admins[i] = c
		}
	})
	return tg.admins
}

// killClients kills every connection of this target's instances (data and pub/sub alike) on
// every server, by id, found by client name: never another user's client on a shared server.
func killClients(ctx context.Context, admins []*redis.Client, name string) (int, error) {
	n := 0
	for _, a := range admins {
		list, err := a.ClientList(ctx).Result()
		if err != nil {
			return n, err
		}
		for _, line := range strings.Split(list, "\n") {
			var id string
			mine := false
			for _, f := range strings.Fields(line) {
				k, v, _ := strings.Cut(f, "=")
				switch k {
				case "id":
					id = v
				case "name":
					mine = v == name
				}
			}
			if !mine || id == "" {
				continue
			}
			if err := a.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err == nil {
				n++
			}
		}
	}
	return n, nil
}

// ownRedis is a redis-server this test runs on its own free port, without persistence, so
// that it can be killed and restarted mid-run without touching the shared servers.
type ownRedis struct {
	addr string
	port int
	dir  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

func startOwnRedis(t testing.TB) *ownRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if inCI() {
			t.Fatalf("redis-server not on PATH: %v", err)
		}
		t.Skipf("redis-server not on PATH: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	o := &ownRedis{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port, dir: t.TempDir()}
	t.Cleanup(o.kill)
	if err := o.start(); err != nil {
		t.Fatal(err)
	}
	return o
}

// start runs the server and waits until it answers.
func (o *ownRedis) start() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cmd != nil {
		return nil
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(o.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", o.dir, "--daemonize", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(o.dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return err
	}
	o.cmd = cmd
	c := redis.NewClient(&redis.Options{Addr: o.addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("own redis-server at %s does not answer: %w", o.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the server at once (SIGKILL: no shutdown, every key and lease lost).
func (o *ownRedis) kill() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cmd == nil {
		return
	}
	_ = o.cmd.Process.Kill()
	_ = o.cmd.Wait()
	o.cmd = nil
}

// A fault acts on a target while a round's workload runs, until ctx ends, and then leaves it
// healthy. It returns a short account of what it did.
type fault func(ctx context.Context, t testing.TB, tg *linzTarget) string

// sleepCtx sleeps for d or until ctx ends, and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo)
}

// faultKill kills the instances' connections every few tens of milliseconds.
func faultKill(ctx context.Context, t testing.TB, tg *linzTarget) string {
	admins := tg.admin(t)
	kills, rounds := 0, 0
	for sleepCtx(ctx, between(20*time.Millisecond, 60*time.Millisecond)) {
		kctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		n, err := killClients(kctx, admins, tg.clientID)
		cancel()
		if err != nil {
			t.Logf("kill: %v", err)
		}
		kills += n
		rounds++
	}
	return fmt.Sprintf("%d connections killed in %d rounds", kills, rounds)
}

// faultRestart kills the test's own redis-server and starts it again, every few hundred
// milliseconds: every value and lease is lost, and the scripts must be loaded again.
func faultRestart(ctx context.Context, t testing.TB, tg *linzTarget) string {
	n := 0
	for sleepCtx(ctx, between(100*time.Millisecond, 250*time.Millisecond)) {
		tg.own.kill()
		sleepCtx(ctx, between(10*time.Millisecond, 80*time.Millisecond))
		if err := tg.own.start(); err != nil {
			t.Error(err)
			return "restart failed"
		}
		n++
	}
	return fmt.Sprintf("%d restarts", n)
}

// faultLatency changes the proxies' latency every few tens of milliseconds: none, well under
// the store timeout, around it, or beyond it, on every connection or on half of them (a
// client's pool then holds slow and fast connections, and a request that timed out on a slow
// one may land after later requests sent on fast ones). Some store calls fail open, others
// land late.
func faultLatency(ctx context.Context, t testing.TB, tg *linzTarget) string {
	phases := 0
	defer func() {
		for _, p := range tg.proxies {
			p.SetLatency(0, 0)
		}
	}()
	for {
		for _, p := range tg.proxies {
			p.SetSlowShare(1)
			switch rand.N(5) {
			case 0:
				p.SetLatency(0, 0)
			case 1:
				p.SetLatency(time.Millisecond, 5*time.Millisecond)
			case 2:
				p.SetLatency(20*time.Millisecond, 80*time.Millisecond)
			case 3:
				p.SetLatency(60*time.Millisecond, 150*time.Millisecond)
			default:
				p.SetSlowShare(0.5)
				p.SetLatency(100*time.Millisecond, 150*time.Millisecond)
			}
		}
		phases++
		if !sleepCtx(ctx, between(20*time.Millisecond, 100*time.Millisecond)) {
			return fmt.Sprintf("%d latency phases", phases)
		}
	}
}

// faultDrop closes every proxied connection every few tens of milliseconds, and now and then
// blackholes a server for up to a few hundred milliseconds.
func faultDrop(ctx context.Context, t testing.TB, tg *linzTarget) string {
	drops, holes := 0, 0
	defer func() {
		for _, p := range tg.proxies {
			p.Blackhole(false)
		}
	}()
	for sleepCtx(ctx, between(20*time.Millisecond, 80*time.Millisecond)) {
		for _, p := range tg.proxies {
			if rand.N(5) == 0 {
				p.Blackhole(true)
				holes++
				d := between(20*time.Millisecond, 250*time.Millisecond)
				time.AfterFunc(d, func() { p.Blackhole(false) })
				continue
			}
			drops += p.DropAll()
		}
	}
	return fmt.Sprintf("%d connections dropped, %d blackholes", drops, holes)
}

// faultMixed picks one of the other faults the target supports for each stretch of the run:
// the soak's fault.
func faultMixed(ctx context.Context, t testing.TB, tg *linzTarget) string {
	var kinds []fault
	if tg.memory == nil {
		kinds = append(kinds, faultKill)
	}
	if tg.own != nil {
		kinds = append(kinds, faultRestart)
	}
	if tg.proxies != nil {
		kinds = append(kinds, faultLatency, faultDrop)
	}
	if len(kinds) == 0 {
		<-ctx.Done()
		return "no fault applies"
	}
	var acc []string
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, between(100*time.Millisecond, 500*time.Millisecond))
		acc = append(acc, kinds[rand.N(len(kinds))](sctx, t, tg))
		cancel()
	}
	return strings.Join(acc, "; ")
}

// erringStore counts the errors a store returns to its cache: a strict scenario whose store
// erred (a call timed out on a busy machine, so callers failed open) is checked as a fault
// scenario instead.
type erringStore struct {
	Store
	errs *atomic.Int64
}

func (s erringStore) count(err error) error {
	if err != nil {
		s.errs.Add(1)
	}
	return err
}

func (s erringStore) GetOrLease(ctx context.Context, key, token string, ttl time.Duration) (Lookup, error) {
	lk, err := s.Store.GetOrLease(ctx, key, token, ttl)
	return lk, s.count(err)
}

func (s erringStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, ttl time.Duration) ([]Lookup, error) {
	lks, err := s.Store.GetOrLeaseMany(ctx, keys, token, ttl)
	return lks, s.count(err)
}

func (s erringStore) Lease(ctx context.Context, key, token string, ttl time.Duration) (Lookup, error) {
	lk, err := s.Store.Lease(ctx, key, token, ttl)
	return lk, s.count(err)
}

func (s erringStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	ok, err := s.Store.Fill(ctx, key, token, value, ttl)
	return ok, s.count(err)
}

func (s erringStore) FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error) {
	ok, err := s.Store.FillMany(ctx, token, entries)
	return ok, s.count(err)
}

func (s erringStore) Release(ctx context.Context, key, token string) (bool, error) {
	ok, err := s.Store.Release(ctx, key, token)
	return ok, s.count(err)
}

func (s erringStore) Delete(ctx context.Context, keys ...string) error {
	return s.count(s.Store.Delete(ctx, keys...))
}
