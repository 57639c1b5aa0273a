package envelope

import (
	"bytes"
	"testing"
	"time"
)

const testSchema = 0xC0FFEE42

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       Header
		payload []byte
	}{
		{"value", Header{Expiry: time.Unix(1700000000, 5).UnixNano(), Delta: 1500 * time.Microsecond}, []byte(`{"a":1}`)},
		{"empty value", Header{}, nil},
		{"not found", Header{Flags: FlagNotFound, Expiry: 42}, nil},
		{"compressed", Header{Flags: FlagCompressed}, []byte{1, 2, 3}},
		{"encrypted", Header{Flags: FlagEncrypted | FlagCompressed}, []byte{9, 9}},
		{"encrypted not found", Header{Flags: FlagEncrypted | FlagNotFound}, make([]byte, 32)},
		{"negative expiry", Header{Expiry: -1}, []byte("x")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.h.Schema = testSchema
			b := Encode(tc.h, tc.payload)
			if len(b) != HeaderSize+len(tc.payload) {
				t.Fatalf("len %d, want %d", len(b), HeaderSize+len(tc.payload))
			}
			h, p, ok := Decode(b, testSchema)
			if !ok {
				t.Fatal("a frame Encode wrote does not decode")
			}
			if h != tc.h || !bytes.Equal(p, tc.payload) {
				t.Fatalf("got %+v %q, want %+v %q", h, p, tc.h, tc.payload)
			}
		})
	}
}

func TestDeltaSaturates(t *testing.T) {
	h, _, _ := Decode(Encode(Header{Delta: 200 * time.Hour}, nil), 0)
	if want := time.Duration(0xFFFFFFFF) * time.Microsecond; h.Delta != want {
		t.Fatalf("delta %v, want the saturated %v", h.Delta, want)
	}
	h, _, _ = Decode(Encode(Header{Delta: -time.Second}, nil), 0)
	if h.Delta != 0 {
		t.Fatalf("negative delta read back as %v", h.Delta)
	}
}

func TestRejects(t *testing.T) {
	good := Encode(Header{Schema: testSchema}, []byte("payload"))
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"short", good[:HeaderSize-1]},
		{"magic", mut(func(b []byte) []byte { b[0] ^= 1; return b })},
		{"version", mut(func(b []byte) []byte { b[1] = 2; return b })},
		{"unknown flag", mut(func(b []byte) []byte { b[2] |= 1 << 5; return b })},
		{"other schema", mut(func(b []byte) []byte { b[18] ^= 1; return b })},
		{"not found with payload", Encode(Header{Flags: FlagNotFound, Schema: testSchema}, []byte("x"))},
		{"compressed not found", Encode(Header{Flags: FlagNotFound | FlagCompressed, Schema: testSchema}, nil)},
		{"compressed encrypted not found", Encode(Header{Flags: FlagNotFound | FlagCompressed | FlagEncrypted, Schema: testSchema}, []byte("x"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, ok := Decode(tc.b, testSchema); ok {
				t.Fatalf("%x decoded", tc.b)
			}
		})
	}
}

// FuzzEnvelope: Decode never panics, and whatever it accepts is exactly the frame Encode
// writes for the header and payload it returns.
func FuzzEnvelope(f *testing.F) {
	f.Add(Encode(Header{Schema: testSchema, Expiry: 1, Delta: time.Millisecond}, []byte(`{"id":1}`)))
	f.Add(Encode(Header{Schema: testSchema, Flags: FlagNotFound}, nil))
	f.Add(Encode(Header{Schema: testSchema, Flags: FlagEncrypted | FlagNotFound}, make([]byte, 32)))
	f.Add(Encode(Header{Schema: testSchema, Flags: FlagCompressed}, []byte{1, 0}))
	f.Add([]byte{0xCA, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, ok := Decode(b, testSchema)
		if !ok {
			if h != (Header{}) || payload != nil {
				t.Fatalf("a rejected frame returned %+v %q", h, payload)
			}
			return
		}
		if h.Schema != testSchema || h.Flags&^knownFlags != 0 {
			t.Fatalf("accepted header %+v", h)
		}
		if again := Encode(h, payload); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x gave %x", b, again)
		}
	})
}
