package slot

import (
	"context"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCRC16 checks the checksum against the reference value given in the
// Redis Cluster specification and a few trivial inputs.
func TestCRC16(t *testing.T) {
	assert.Equal(t, uint16(0x31C3), crc16("123456789"), "spec check value")
	assert.Equal(t, uint16(0), crc16(""))
	assert.Equal(t, crc16Table['A'], crc16("A"), "single byte is a table lookup")
}

// TestCRC16Table recomputes the lookup table bit by bit, so a typo in the
// literal cannot go unnoticed.
func TestCRC16Table(t *testing.T) {
	for i := range 256 {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		require.Equalf(t, crc, crc16Table[i], "table entry %d", i)
	}
}

// TestOf checks slots and hash-tag handling against the examples in the Redis
// Cluster specification and other known CLUSTER KEYSLOT results.
func TestOf(t *testing.T) {
	tests := []struct {
		name string
		key  string
		want int // exact slot, or -1 when only hashed is checked
		// hashed is the substring whose slot the key must share.
		hashed string
	}{
		{name: "foo", key: "foo", want: 12182, hashed: "foo"},
		{name: "bar", key: "bar", want: 5061, hashed: "bar"},
		{name: "empty key", key: "", want: 0, hashed: ""},
		{name: "check string", key: "123456789", want: 0x31C3, hashed: "123456789"},
		{name: "tag user1000 following", key: "{user1000}.following", want: -1, hashed: "user1000"},
		{name: "tag user1000 followers", key: "{user1000}.followers", want: -1, hashed: "user1000"},
		{name: "empty tag hashes whole key", key: "foo{}{bar}", want: -1, hashed: "foo{}{bar}"},
		{name: "tag may contain open brace", key: "foo{{bar}}zap", want: -1, hashed: "{bar"},
		{name: "first tag wins", key: "foo{bar}{zap}", want: -1, hashed: "bar"},
		{name: "tag in the middle", key: "a{bar}b", want: 5061, hashed: "bar"},
		{name: "unclosed brace", key: "foo{bar", want: -1, hashed: "foo{bar"},
		{name: "close before open", key: "foo}bar{", want: -1, hashed: "foo}bar{"},
		{name: "lone open brace", key: "{", want: -1, hashed: "{"},
		{name: "lone empty tag", key: "{}", want: -1, hashed: "{}"},
		{name: "single byte tag", key: "{a}", want: -1, hashed: "a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Of(tc.key)
			assert.Equal(t, tc.hashed, hashPart(tc.key), "hashed part")
			assert.Equal(t, int(crc16(tc.hashed))%Count, got, "slot of hashed part")
			if tc.want >= 0 {
				assert.Equal(t, tc.want, got)
			}
			assert.GreaterOrEqual(t, got, 0)
			assert.Less(t, got, Count)
		})
	}

	assert.Equal(t, Of("{user1000}.following"), Of("{user1000}.followers"))
	assert.Equal(t, Of("user1000"), Of("{user1000}.following"))
}

// TestOfNoAlloc checks that computing a slot does not allocate.
func TestOfNoAlloc(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() { _ = Of("foo{bar}{zap}") })
	assert.Zero(t, allocs)
}

// TestOfMatchesCluster compares Of with CLUSTER KEYSLOT on a live cluster
// node for random keys, including keys with braces and arbitrary bytes. It
// needs CACHEASIDE_CLUSTER_ADDRS (comma-separated host:port list); without it
// the test is skipped, or fails when CI=true.
func TestOfMatchesCluster(t *testing.T) {
	addrs := os.Getenv("CACHEASIDE_CLUSTER_ADDRS")
	if addrs == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CACHEASIDE_CLUSTER_ADDRS is not set but CI=true: a Redis Cluster is required")
		}
		t.Skip("CACHEASIDE_CLUSTER_ADDRS not set; skipping live cluster cross-check")
	}
	addr := strings.TrimSpace(strings.Split(addrs, ",")[0])

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer func() { _ = client.Close() }()
	require.NoError(t, client.Ping(ctx).Err(), "ping %s", addr)

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	const alphabet = "abcxyz0189{}{}:._-"
	keys := []string{"", "foo", "bar", "{", "}", "{}", "}{", "{{}}", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}"}
	for len(keys) < 200+11 {
		b := make([]byte, rng.IntN(24))
		for i := range b {
			if rng.IntN(8) == 0 {
				b[i] = byte(rng.IntN(256)) // arbitrary, possibly non-UTF-8 byte
			} else {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		keys = append(keys, string(b))
	}

	for _, key := range keys {
		want, err := client.ClusterKeySlot(ctx, key).Result()
		require.NoError(t, err, "CLUSTER KEYSLOT %q", key)
		assert.Equalf(t, int(want), Of(key), "slot of %q", key)
	}
}
