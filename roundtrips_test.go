package cacheaside

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// A hit is one round trip; a miss with a load at most two.
func TestRoundTrips(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		counter := countRoundTrips(raw)
		c := newTestCache[int](t, NewRedisStore(raw))
		require.NoError(t, raw.Ping(bg()).Err()) // dial and load nothing yet
		_, err := c.GetOrLoad(bg(), "warm", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err) // loads scripts on the server

		counter.reset()
		_, err = c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err)
		require.LessOrEqual(t, counter.load(), 2, "round trips of a miss with a load")

		counter.reset()
		_, err = c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err)
		require.Equal(t, 1, counter.load(), "round trips of a hit")
	})
}

// roundTrips counts the round trips a client makes, per node: each command, and each pipeline
// a node receives. Build it with countRoundTrips.
type roundTrips struct {
	mu    sync.Mutex
	nodes map[string]int // by node address ("" for a client of one server)
}

// countRoundTrips counts raw's round trips. raw must not have sent anything yet. On Cluster
// the hook goes on each node's client as go-redis creates it (OnNewNode): a hook on the
// ClusterClient itself runs once per pipeline however many nodes it goes to (go-redis v9
// runs the node clients' pipeline hooks once per node: processPipelineNode), so it could
// not see a node sent more than one.
func countRoundTrips(raw redis.UniversalClient) *roundTrips {
	r := &roundTrips{nodes: map[string]int{}}
	if cc, ok := raw.(*redis.ClusterClient); ok {
		cc.OnNewNode(func(node *redis.Client) { node.AddHook(nodeTrips{r, node.Options().Addr}) })
	} else {
		raw.AddHook(nodeTrips{r, ""})
	}
	return r
}

func (r *roundTrips) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.nodes)
}

// load returns the round trips of every node together.
func (r *roundTrips) load() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.nodes {
		n += c
	}
	return n
}

// perNode returns the round trips of each node that had any.
func (r *roundTrips) perNode() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.nodes)
}

// maxPerNode returns the round trips of the busiest node.
func (r *roundTrips) maxPerNode() int {
	n := 0
	for _, c := range r.perNode() {
		n = max(n, c)
	}
	return n
}

func (r *roundTrips) add(addr string) {
	r.mu.Lock()
	r.nodes[addr]++
	r.mu.Unlock()
}

// nodeTrips is the hook of one node's client.
type nodeTrips struct {
	r    *roundTrips
	addr string
}

// notCounted are the commands go-redis sends on its own: the handshake of a new connection
// (HELLO, CLIENT SETINFO) and Cluster topology reads.
func notCounted(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "client", "cluster":
		return true
	}
	return false
}

func (h nodeTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h nodeTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if !notCounted(cmd) && !(cmd.Name() == "evalsha" && isNoScript(cmd.Err())) {
			h.r.add(h.addr) // a NOSCRIPT reply is retried as EVAL by go-redis: count that once
		}
		return err
	}
}
func (h nodeTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return !notCounted(c) }) {
			return next(ctx, cmds) // a connection's handshake
		}
		h.r.add(h.addr)
		return next(ctx, cmds)
	}
}
