package cacheaside

import (
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// OtherGroup is the key group of every key whose group was not among the first max groups
// seen (WithKeyGroups), or whose group name is empty or not valid UTF-8.
const OtherGroup = "other"

// WithKeyGroups counts requests and loads per key group, so a hit ratio by key pattern needs
// no per-key label: groupOf maps a key (as given to GetOrLoad, without the prefix) to a
// small, bounded group name such as "user" or "product", and the metrics get a group label.
// The first max distinct names get their own counts; any other name folds into OtherGroup,
// so memory and metric series stay bounded whatever groupOf returns. Default: no groups
// (the group label is empty).
//
// groupOf runs on every request, hits included, from many goroutines: keep it cheap, free of
// allocation, and safe for concurrent use (KeyGroupBefore builds one). A batch loader call
// (GetOrLoadMany, Warm) counts once: under its keys' group if they all share one, else under
// OtherGroup, so the loads of all groups add up to the loader calls. max must be positive
// and groupOf not nil.
func WithKeyGroups(groupOf func(key string) string, max int) Option {
	return func(c *config) {
		if groupOf == nil {
			c.invalid("key group function must not be nil")
			return
		}
		if max <= 0 {
			c.invalid("key group bound must be positive, got %d", max)
			return
		}
		c.obs.groupOf, c.obs.groupMax = groupOf, max
	}
}

// KeyGroupBefore returns a key group function for WithKeyGroups: the part of the key before
// the first sep ("user:42" is in group "user" with sep ":"), or the whole key if sep does not
// occur in it. It does not allocate.
func KeyGroupBefore(sep string) func(key string) string {
	return func(key string) string {
		g, _, _ := strings.Cut(key, sep)
		return g
	}
}

// keyGroups maps keys to the counters of their group: a copy-on-write map read with one
// atomic load, grown under a lock up to max groups, after which new names fold into other
// without taking the lock.
type keyGroups struct {
	groupOf func(string) string
	max     int
	known   atomic.Pointer[map[string]*groupCounters]
	full    atomic.Bool
	mu      sync.Mutex
	other   *groupCounters
}

func newKeyGroups(groupOf func(string) string, max int) *keyGroups {
	g := &keyGroups{groupOf: groupOf, max: max, other: newGroupCounters(OtherGroup)}
	m := map[string]*groupCounters{}
	g.known.Store(&m)
	return g
}

// of returns the counters of key's group.
func (g *keyGroups) of(key string) *groupCounters {
	name := g.groupOf(key)
	if c, ok := (*g.known.Load())[name]; ok {
		return c
	}
	if g.full.Load() || name == "" || name == OtherGroup || !utf8.ValidString(name) {
		return g.other
	}
	return g.add(name)
}

func (g *keyGroups) add(name string) *groupCounters {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := *g.known.Load()
	if c, ok := m[name]; ok {
		return c
	}
	if len(m) >= g.max {
		g.full.Store(true)
		return g.other
	}
	name = strings.Clone(name) // it may point into a caller's key
	next := maps.Clone(m)
	c := newGroupCounters(name)
	next[name] = c
	g.known.Store(&next)
	return c
}

// each calls fn with the counters of every group seen, and of other.
func (g *keyGroups) each(fn func(*groupCounters)) {
	for _, c := range *g.known.Load() {
		fn(c)
	}
	fn(g.other)
}

// eachGroup calls fn with the counters of every group (the single set without key groups).
func (o *observer) eachGroup(fn func(*groupCounters)) {
	if o.groups == nil {
		fn(o.all)
		return
	}
	o.groups.each(fn)
}
