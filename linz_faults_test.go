package cacheaside

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/slot"
	"github.com/redis/go-redis/v9"
)

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

// faultKill kills the instances' connections every few tens of milliseconds: data
// connections, and the pub/sub connections of the local caches' subscriptions.
func faultKill(ctx context.Context, t testing.TB, tg *linzTarget) string {
	admins := tg.admin(t)
	data, pubsub, rounds := 0, 0, 0
	for sleepCtx(ctx, between(20*time.Millisecond, 60*time.Millisecond)) {
		kctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		d, p, err := killClients(kctx, admins, tg.clientID)
		cancel()
		if err != nil {
			t.Logf("kill: %v", err)
		}
		data += d
		pubsub += p
		rounds++
	}
	if pubsub > 0 {
		return fmt.Sprintf("%d data and %d pub/sub connections killed in %d rounds", data, pubsub, rounds)
	}
	return fmt.Sprintf("%d connections killed in %d rounds", data, rounds)
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

// faultLatency changes the proxies' latency every few tens of milliseconds (each way, so a
// round trip takes twice as long): none, well under the store timeout (100 ms a call in the
// fault scenarios), around it, or beyond it on half of the connections (a client's pool then
// holds slow and fast connections, and a request that timed out on a slow one may land after
// later requests sent on fast ones). Most store calls succeed; some fail open, and land late.
func faultLatency(ctx context.Context, t testing.TB, tg *linzTarget) string {
	phases := 0
	defer func() {
		for _, p := range tg.proxies {
			p.SetLatency(0, 0)
		}
	}()
	for {
		phase := rand.N(5) // the same on every server: a slow node slows a whole Cluster's calls
		for _, p := range tg.proxies {
			p.SetSlowShare(1)
			switch phase {
			case 0:
				p.SetLatency(0, 0)
			case 1:
				p.SetLatency(time.Millisecond, 4*time.Millisecond)
			case 2:
				p.SetLatency(5*time.Millisecond, 20*time.Millisecond)
			case 3:
				p.SetLatency(30*time.Millisecond, 30*time.Millisecond)
			default:
				p.SetSlowShare(0.5)
				p.SetLatency(60*time.Millisecond, 60*time.Millisecond)
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

// slotMover moves one hash slot of the repo's 3-master cluster (scripts/cluster.sh) from its
// owner to another master and back, as a resharding does: IMPORTING on the target, MIGRATING
// on the source, MIGRATE of every key of the slot, then SETSLOT NODE on every master. While a
// slot migrates, commands on its keys are redirected (ASK) to the target once a key has moved,
// and a script on two keys of which one has moved fails with TRYAGAIN (go-redis retries it).
//
// The slot is chosen empty, so other users of the shared cluster are unlikely to have keys in
// it while it moves (theirs would move too, and stay reachable through the redirections). The
// slot goes back to its owner at the end of the fault, and at cleanup whatever happened.
type slotMover struct {
	slot  int
	tag   string // keys with {tag} hash to slot
	nodes []clusterNode
	home  int // index of the slot's owner when chosen

	mu     sync.Mutex
	owner  int // index of the owner as this mover left it
	target int // index of the target of a migration under way, or -1
}

type clusterNode struct {
	id, host, port string
	c              *redis.Client
}

// newSlotMover prepares the slot-migration fault on tg, a cluster target: it skips unless the
// cluster is the 3-master, replica-less one of scripts/cluster.sh, and picks an empty slot.
func newSlotMover(t testing.TB, tg *linzTarget) *slotMover {
	t.Helper()
	if !slices.Equal(tg.addrs, []string{"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}) {
		t.Skipf("slot migration runs only on the cluster of scripts/cluster.sh (127.0.0.1:7000-7002), not %v", tg.addrs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := &slotMover{target: -1}
	for i, a := range tg.admin(t) {
		id, err := a.Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			t.Fatalf("CLUSTER MYID on %s: %v", tg.addrs[i], err)
		}
		host, port, _ := net.SplitHostPort(tg.addrs[i])
		m.nodes = append(m.nodes, clusterNode{id: id, host: host, port: port, c: a})
	}
	for _, n := range m.nodes {
		view, err := n.c.ClusterNodes(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Split(strings.TrimSpace(view), "\n"); len(lines) != 3 || strings.Count(view, "master") != 3 || strings.Contains(view, "slave") {
			t.Skipf("slot migration needs the 3 masters without replicas of scripts/cluster.sh; %s sees:\n%s", n.port, view)
		}
	}
	var b [4]byte
	_, _ = crand.Read(b[:])
	// The rest of the suite leaves tens of thousands of keys on the shared cluster until their
	// TTLs pass, so few slots are empty: many candidates are tried. A slot an earlier round
	// moved may take the masters a moment to agree on (gossip): a disagreement waits a little.
	var last slotState
	for i := 0; ; i++ {
		if i == 5000 {
			t.Fatalf("found no empty, stable hash slot in 5000 tries; the last, %d: %+v", m.slot, last)
		}
		m.tag = fmt.Sprintf("linz-%x-%d", b, i)
		m.slot = slot.Of("{" + m.tag + "}")
		st, err := m.state(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.owner >= 0 && st.settled(st.owner) && st.keys[st.owner] == 0 {
			m.home, m.owner = st.owner, st.owner
			break
		}
		if st.owner < 0 || !st.settled(st.owner) {
			time.Sleep(10 * time.Millisecond)
		}
		last = st
	}
	t.Cleanup(func() { m.restore(t) })
	return m
}

// slotState is what every master says of the slot.
type slotState struct {
	owner int    // the owner in the first master's view, -1 if none
	views []int  // the owner in each master's view
	open  []bool // each master has the slot importing or migrating
	keys  []int  // keys of the slot on each master
}

// settled reports whether every master sees owner as the owner, none has the slot open, and
// no other master holds keys of it.
func (s slotState) settled(owner int) bool {
	for i := range s.views {
		if s.views[i] != owner || s.open[i] || (i != owner && s.keys[i] > 0) {
			return false
		}
	}
	return true
}

func (m *slotMover) state(ctx context.Context) (slotState, error) {
	st := slotState{views: make([]int, len(m.nodes)), open: make([]bool, len(m.nodes)), keys: make([]int, len(m.nodes))}
	for i, n := range m.nodes {
		view, err := n.c.ClusterNodes(ctx).Result()
		if err != nil {
			return st, err
		}
		st.views[i] = -1
		for _, line := range strings.Split(strings.TrimSpace(view), "\n") {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			for _, r := range f[8:] {
				if strings.HasPrefix(r, "[") {
					if strings.HasPrefix(r, fmt.Sprintf("[%d-", m.slot)) && strings.Contains(f[2], "myself") {
						st.open[i] = true
					}
					continue
				}
				lo, hi, _ := strings.Cut(r, "-")
				if hi == "" {
					hi = lo
				}
				l, _ := strconv.Atoi(lo)
				h, _ := strconv.Atoi(hi)
				if m.slot >= l && m.slot <= h {
					st.views[i] = slices.IndexFunc(m.nodes, func(c clusterNode) bool { return c.id == f[0] })
				}
			}
		}
		k, err := n.c.ClusterCountKeysInSlot(ctx, m.slot).Result()
		if err != nil {
			return st, err
		}
		st.keys[i] = int(k)
	}
	st.owner = st.views[0]
	return st, nil
}

// migrate moves the slot from master src to master dst; pause is called once the slot is
// open on both, and between keys, to let traffic run against the half-moved slot.
func (m *slotMover) migrate(ctx context.Context, src, dst int, pause func()) (moved int, err error) {
	s, d := m.nodes[src], m.nodes[dst]
	m.mu.Lock()
	m.target = dst
	m.mu.Unlock()
	do := func(n clusterNode, args ...any) error {
		if err := n.c.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("%v on %s: %w", args, n.port, err)
		}
		return nil
	}
	if err := do(d, "CLUSTER", "SETSLOT", m.slot, "IMPORTING", s.id); err != nil {
		return moved, err
	}
	if err := do(s, "CLUSTER", "SETSLOT", m.slot, "MIGRATING", d.id); err != nil {
		return moved, err
	}
	pause()
	for {
		keys, err := s.c.ClusterGetKeysInSlot(ctx, m.slot, 10).Result()
		if err != nil {
			return moved, err
		}
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			// No REPLACE: a key never exists on both sides (a key missing from the source is
			// created on the target only), so BUSYKEY would be a bug worth seeing.
			if err := do(s, "MIGRATE", d.host, d.port, k, 0, 5000); err != nil {
				return moved, err
			}
			moved++
			pause()
		}
	}
	// The target first, then the source, then the third master: each then redirects to the
	// new owner at once, with no wait for gossip.
	for _, i := range []int{dst, src, 3 - src - dst} {
		if err := do(m.nodes[i], "CLUSTER", "SETSLOT", m.slot, "NODE", d.id); err != nil {
			return moved, err
		}
	}
	m.mu.Lock()
	m.owner, m.target = dst, -1
	m.mu.Unlock()
	return moved, nil
}

// restore puts the slot back on its home master, finishing a migration left half done, and
// fails the test if the cluster does not end as it was.
func (m *slotMover) restore(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m.mu.Lock()
	owner, target := m.owner, m.target
	m.mu.Unlock()
	var err error
	if target >= 0 {
		_, err = m.migrate(ctx, owner, target, func() {})
		owner = target
	}
	if err == nil && owner != m.home {
		_, err = m.migrate(ctx, owner, m.home, func() {})
	}
	st, serr := m.state(ctx)
	if err == nil && serr == nil && st.settled(m.home) {
		return
	}
	t.Errorf("slot %d was not restored to %s (%v, %v; state %+v): run make cluster-stop cluster", m.slot, m.nodes[m.home].port, err, serr, st)
}

// faultMigrate moves the scenario's slot to another master and back, again and again, with
// pauses while it is half moved, and leaves it home.
func faultMigrate(ctx context.Context, t testing.TB, tg *linzTarget) string {
	m := tg.mover
	pause := func() { time.Sleep(between(2*time.Millisecond, 10*time.Millisecond)) }
	cmdCtx := context.WithoutCancel(ctx) // a move under way is finished whatever ctx does
	moves, keys := 0, 0
	for i := 0; sleepCtx(ctx, between(10*time.Millisecond, 40*time.Millisecond)) || m.owner != m.home; i++ {
		src := m.owner
		dst := m.home
		if src == m.home {
			dst = (m.home + 1 + i%2) % len(m.nodes)
		}
		n, err := m.migrate(cmdCtx, src, dst, pause)
		keys += n
		if err != nil {
			t.Errorf("slot migration: %v", err)
			return "migration failed"
		}
		moves++
	}
	return fmt.Sprintf("%d slot moves, %d keys migrated", moves, keys)
}
