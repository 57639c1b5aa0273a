package bench

// BenchmarkCodec measures what a value costs on the wire, per codec and wrapper, through the
// public API on the memory store (no network, so the codec and its wrappers dominate):
//
//	BenchmarkCodec/<codec>/<wrapper>/<size>           one fill (encode) and one hit (decode)
//	BenchmarkCodecHit/<codec>/<wrapper>/<size>        one hit: the store lookup and the decode
//	BenchmarkCodecHitParallel/<codec>/<wrapper>/<size> the same, on every CPU
//
// A fill is Invalidate + GetOrLoad on a missing key (lease, load, encode, fill); a hit is a
// GetOrLoad that finds it. raw/plain/small is the cache's own overhead: subtract it to see
// the codec and wrapper alone. bytes/value is the stored frame, envelope included; cpu-ns/op
// (serial benchmarks) is the process's CPU time per op, steadier than ns/op on a shared machine.
//
// Codecs: json, msgpack (a struct), proto (structpb.Struct, a generic message heavier than a
// generated one; wrapperspb.BytesValue for the blob), raw ([]byte). Wrappers: plain
// (WithCompression(0)), s2 (the default, from 1 KiB), aes (AES-256-GCM), s2+aes. Sizes: a small
// struct, a 10 KiB JSON document (JSON bytes for raw), a 1 MiB random blob (a struct with a
// []byte field for json and msgpack: base64 in JSON).

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/codec/msgpack"
	protocodec "github.com/cacheaside/cacheaside/codec/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type record struct {
	ID        int               `json:"id" msgpack:"id"`
	Name      string            `json:"name" msgpack:"name"`
	Email     string            `json:"email" msgpack:"email"`
	Active    bool              `json:"active" msgpack:"active"`
	Balance   float64           `json:"balance" msgpack:"balance"`
	Tags      []string          `json:"tags" msgpack:"tags"`
	CreatedAt string            `json:"created_at" msgpack:"created_at"`
	Address   map[string]string `json:"address" msgpack:"address"`
}

type document struct {
	Records []record `json:"records" msgpack:"records"`
}

type blob struct {
	Data []byte `json:"data" msgpack:"data"`
}

var words = []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}

func newRecord(r *mrand.Rand) record {
	return record{
		ID: r.IntN(1e6), Name: words[r.IntN(8)] + " " + words[r.IntN(8)],
		Email: fmt.Sprintf("user%d@example.com", r.IntN(1e5)), Active: r.IntN(2) == 0,
		Balance: float64(r.IntN(1e6)) / 100, Tags: words[:r.IntN(4)],
		CreatedAt: fmt.Sprintf("2024-%02d-%02dT10:00:00Z", 1+r.IntN(12), 1+r.IntN(28)),
		Address:   map[string]string{"city": words[r.IntN(8)], "zip": fmt.Sprintf("%05d", r.IntN(99999))},
	}
}

// tenKiB is a document whose JSON is about 10 KiB.
func tenKiB() document {
	r := mrand.New(mrand.NewPCG(1, 2))
	var d document
	for {
		d.Records = append(d.Records, newRecord(r))
		if b, _ := json.Marshal(d); len(b) >= 10<<10 {
			return d
		}
	}
}

func randomBlob() []byte {
	b := make([]byte, 1<<20)
	_, _ = rand.Read(b)
	return b
}

// asStruct converts a JSON-able value to a structpb.Struct with the same content.
func asStruct(b *testing.B, v any) *structpb.Struct {
	j, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		b.Fatal(err)
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

type wrapper struct {
	name string
	opts func(b *testing.B) []cacheaside.Option
}

func wrappers() []wrapper {
	ring := func(b *testing.B) *cacheaside.KeyRing {
		key := make([]byte, cacheaside.KeySize)
		_, _ = rand.Read(key)
		r, err := cacheaside.NewKeyRing(1, key)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	return []wrapper{
		{"plain", func(*testing.B) []cacheaside.Option { return []cacheaside.Option{cacheaside.WithCompression(0)} }},
		{"s2", func(*testing.B) []cacheaside.Option {
			return []cacheaside.Option{cacheaside.WithCompression(cacheaside.DefaultCompressionThreshold)}
		}},
		{"aes", func(b *testing.B) []cacheaside.Option {
			return []cacheaside.Option{cacheaside.WithCompression(0), cacheaside.WithEncryption(ring(b))}
		}},
		{"s2+aes", func(b *testing.B) []cacheaside.Option {
			return []cacheaside.Option{cacheaside.WithCompression(cacheaside.DefaultCompressionThreshold), cacheaside.WithEncryption(ring(b))}
		}},
	}
}

// mode is what one benchmark iteration does.
type mode int

const (
	fillAndHit mode = iota
	hit
	hitParallel
)

// run benchmarks one codec x wrapper x size.
func run[T any](b *testing.B, m mode, codec cacheaside.Codec, w wrapper, v T) {
	ctx := context.Background()
	store := cacheaside.NewMemoryStore(cacheaside.WithMemoryMaxBytes(256 << 20))
	defer store.Close()
	opts := append(w.opts(b), cacheaside.WithCodec(codec), cacheaside.WithPrefix("bench:"),
		cacheaside.WithMaxValueSize(4<<20), cacheaside.WithTTL(time.Hour))
	c, err := cacheaside.New[T](store, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	loads := 0
	load := func(context.Context) (T, error) { loads++; return v, nil }
	mustGet := func() {
		if _, err := c.GetOrLoad(ctx, "k", load); err != nil {
			b.Fatal(err)
		}
	}
	mustGet()
	lk, err := store.GetOrLease(ctx, "bench:k", "probe", time.Second)
	if err != nil || lk.Value == nil {
		b.Fatalf("value not stored: %v", err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, n := processCPU(), 0
	switch m {
	case fillAndHit:
		for b.Loop() {
			if err := c.Invalidate(ctx, "k"); err != nil {
				b.Fatal(err)
			}
			mustGet() // a miss: encode and fill
			mustGet() // a hit: decode
			n++
		}
		if loads != n+1 {
			b.Fatalf("%d loads for %d iterations: values not stored", loads, n)
		}
	case hit:
		for b.Loop() {
			mustGet()
			n++
		}
	case hitParallel:
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.GetOrLoad(ctx, "k", load); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	if cpu1 := processCPU(); cpu0 >= 0 && n > 0 {
		// CPU time per op: wall time counts the waits for a CPU on a busy machine, this does
		// not (it counts GC and other goroutines of the process, as a server would pay them).
		b.ReportMetric(float64(cpu1-cpu0)/float64(n), "cpu-ns/op")
	}
	if m != fillAndHit && loads != 1 {
		b.Fatalf("%d loads: hits were not hits", loads)
	}
	b.ReportMetric(float64(len(lk.Value)), "bytes/value")
}

func benchCodecs(b *testing.B, m mode) {
	r := mrand.New(mrand.NewPCG(3, 4))
	small, doc, raw := newRecord(r), tenKiB(), randomBlob()
	smallJSON, _ := json.Marshal(small)
	docJSON, _ := json.Marshal(doc)
	smallPB, docPB := asStruct(b, small), asStruct(b, doc)
	for _, w := range wrappers() {
		for _, codec := range []cacheaside.Codec{cacheaside.JSONCodec{}, msgpack.Codec{}} {
			b.Run(codec.Name()+"/"+w.name+"/small", func(b *testing.B) { run(b, m, codec, w, small) })
			b.Run(codec.Name()+"/"+w.name+"/10KiB", func(b *testing.B) { run(b, m, codec, w, doc) })
			b.Run(codec.Name()+"/"+w.name+"/1MiB", func(b *testing.B) { run(b, m, codec, w, blob{raw}) })
		}
		pc := protocodec.Codec{}
		b.Run("proto/"+w.name+"/small", func(b *testing.B) { run(b, m, pc, w, smallPB) })
		b.Run("proto/"+w.name+"/10KiB", func(b *testing.B) { run(b, m, pc, w, docPB) })
		b.Run("proto/"+w.name+"/1MiB", func(b *testing.B) { run(b, m, pc, w, wrapperspb.Bytes(raw)) })
		rc := cacheaside.RawCodec{}
		b.Run("raw/"+w.name+"/small", func(b *testing.B) { run(b, m, rc, w, smallJSON) })
		b.Run("raw/"+w.name+"/10KiB", func(b *testing.B) { run(b, m, rc, w, docJSON) })
		b.Run("raw/"+w.name+"/1MiB", func(b *testing.B) { run(b, m, rc, w, raw) })
	}
}

func BenchmarkCodec(b *testing.B)            { benchCodecs(b, fillAndHit) }
func BenchmarkCodecHit(b *testing.B)         { benchCodecs(b, hit) }
func BenchmarkCodecHitParallel(b *testing.B) { benchCodecs(b, hitParallel) }
