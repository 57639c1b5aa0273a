package cacheaside

// The stores the linearizability scenarios run on, and the faults they inject into them:
// connections killed with CLIENT KILL (data and pub/sub, only this test's own clients, found
// by client name), a redis-server of the test's own killed and restarted, latency, blackholes
// and dropped connections through internal/faultproxy, and a hash slot of the Cluster
// migrated between masters and back.

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

	// mute makes the instances' stores send no invalidation message (the broken-L1 check).
	mute bool
	// mover migrates a hash slot of the cluster back and forth (the slot-migration fault);
	// keyTag is a hash tag of that slot, put in every key of the scenario.
	mover  *slotMover
	keyTag string

	adminOnce sync.Once
	admins    []*redis.Client
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
		if tg.mute {
			return mutedMemory{tg.memory}
		}
		return tg.memory
	}
	var c redis.UniversalClient
	if tg.cluster {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: tg.addrs, ClientName: tg.clientID, Dialer: tg.dial})
	} else {
		c = redis.NewClient(&redis.Options{Addr: tg.addrs[0], ClientName: tg.clientID, Dialer: tg.dial})
	}
	t.Cleanup(func() { c.Close() })
	if tg.mute {
		return mutedRedis{NewRedisStore(c)}
	}
	// The store as users build it: every optional interface of RedisStore (broadcast,
	// pipelined delete and publish, batch release) is what the caches see.
	return NewRedisStore(c)
}

// mutedRedis and mutedMemory are stores that deliver no invalidation message to the other
// instances' local caches: a broken L1, to show the checker catches the stale reads it
// serves.
type mutedRedis struct{ *RedisStore }

func (mutedRedis) Publish(context.Context, string, []byte) error { return nil }
func (mutedRedis) deleteAndPublish(context.Context, []string, string, []byte) (bool, error) {
	return false, nil
}

type mutedMemory struct{ *MemoryStore }

func (mutedMemory) Publish(context.Context, string, []byte) error { return nil }

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
// It returns how many of each kind it killed.
func killClients(ctx context.Context, admins []*redis.Client, name string) (data, pubsub int, err error) {
	for _, a := range admins {
		list, err := a.ClientList(ctx).Result()
		if err != nil {
			return data, pubsub, err
		}
		for _, line := range strings.Split(list, "\n") {
			f := map[string]string{}
			for _, kv := range strings.Fields(line) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					f[k] = v
				}
			}
			if f["name"] != name || f["id"] == "" {
				continue
			}
			sub := strings.Contains(f["flags"], "P") || (f["sub"] != "" && f["sub"] != "0")
			if a.Do(ctx, "CLIENT", "KILL", "ID", f["id"]).Err() != nil {
				continue
			}
			if sub {
				pubsub++
			} else {
				data++
			}
		}
	}
	return data, pubsub, nil
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
