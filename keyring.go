package cacheaside

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// KeySize is the length of an encryption key: AES-256.
const KeySize = 32

// WithEncryption seals every value this cache stores (not-found entries included) with
// AES-256-GCM under the key ring's primary key, and opens values sealed with any key of the
// ring. The full store key (prefix + key) and the value's header are authenticated with it: a
// value that was altered in any byte, copied to another key, or sealed with a key the ring no
// longer holds does not open, and is a miss (counted, then replaced by the next fill), never an
// error. A cache with encryption treats every unencrypted value as a miss, so nobody who can
// write to the store can plant a value in it; a cache without encryption treats encrypted
// values as misses. Default: none. The ring must hold a primary key.
//
// Several caches, in one process or many, may share keys; the ring may change while they run
// (see KeyRing for rotation).
func WithEncryption(ring *KeyRing) Option {
	return func(c *config) {
		if ring == nil || ring.set.Load() == nil {
			c.invalid("encryption needs a key ring with a primary key")
			return
		}
		c.wire.ring = ring
	}
}

// KeyRing holds the AES-256 keys of WithEncryption: new values are sealed with the primary key,
// values sealed with any key of the ring open. Each value names the id of the key that sealed
// it. A KeyRing is safe for concurrent use, and changes apply at once to every cache using it.
//
// Rotate a key across processes in three steps: Add the new key to every process's ring (they
// can all open what it seals); then Use it as the primary everywhere; once every value sealed
// with the old key has expired (the longest TTL), Remove the old key. Values sealed with a
// removed key are misses, and get replaced, sealed with the primary key.
//
// AES-GCM with random nonces must not seal more than 2^32 values with one key: rotate well
// before that many fills.
//
// The ring keeps no copy of the key bytes it was given (only the expanded cipher), and it
// never prints them: its String, GoString and Format show key ids only.
type KeyRing struct {
	mu  sync.Mutex             // serialises changes
	set atomic.Pointer[keySet] // read on every seal and open; replaced, never modified
}

// keySet is one immutable state of a KeyRing.
type keySet struct {
	primary uint32
	aeads   map[uint32]cipher.AEAD
}

// NewKeyRing returns a key ring whose primary key is key, named id. key must be KeySize (32)
// bytes, else the error wraps ErrInvalidOption.
func NewKeyRing(id uint32, key []byte) (*KeyRing, error) {
	aead, err := newAEAD(id, key)
	if err != nil {
		return nil, err
	}
	r := &KeyRing{}
	r.set.Store(&keySet{primary: id, aeads: map[uint32]cipher.AEAD{id: aead}})
	return r, nil
}

func newAEAD(id uint32, key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: encryption key %d must be %d bytes, got %d", ErrInvalidOption, id, KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: encryption key %d: %w", ErrInvalidOption, id, err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("%w: encryption key %d: %w", ErrInvalidOption, id, err)
	}
	return aead, nil
}

// change applies fn to a copy of the ring's keys and stores the result, unless fn fails.
func (r *KeyRing) change(fn func(s *keySet) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.set.Load()
	if old == nil {
		return fmt.Errorf("%w: key ring has no keys: make it with NewKeyRing", ErrInvalidOption)
	}
	s := &keySet{primary: old.primary, aeads: maps.Clone(old.aeads)}
	if err := fn(s); err != nil {
		return err
	}
	r.set.Store(s)
	return nil
}

// Add adds key, named id, to the ring: values it sealed open from now on. It does not become
// the primary key (see Use). key must be KeySize (32) bytes and id new to the ring, else the
// error wraps ErrInvalidOption.
func (r *KeyRing) Add(id uint32, key []byte) error {
	aead, err := newAEAD(id, key)
	if err != nil {
		return err
	}
	return r.change(func(s *keySet) error {
		if _, ok := s.aeads[id]; ok {
			return fmt.Errorf("%w: key ring already holds key %d", ErrInvalidOption, id)
		}
		s.aeads[id] = aead
		return nil
	})
}

// Use makes key id, already in the ring, the primary key: new values are sealed with it.
func (r *KeyRing) Use(id uint32) error {
	return r.change(func(s *keySet) error {
		if _, ok := s.aeads[id]; !ok {
			return fmt.Errorf("%w: key ring holds no key %d", ErrInvalidOption, id)
		}
		s.primary = id
		return nil
	})
}

// Remove removes key id from the ring: values it sealed are misses from now on. The primary
// key cannot be removed.
func (r *KeyRing) Remove(id uint32) error {
	return r.change(func(s *keySet) error {
		if _, ok := s.aeads[id]; !ok {
			return fmt.Errorf("%w: key ring holds no key %d", ErrInvalidOption, id)
		}
		if id == s.primary {
			return fmt.Errorf("%w: key %d is the primary key: Use another before removing it", ErrInvalidOption, id)
		}
		delete(s.aeads, id)
		return nil
	})
}

// Primary returns the id of the key that seals new values.
func (r *KeyRing) Primary() uint32 {
	if s := r.set.Load(); s != nil {
		return s.primary
	}
	return 0
}

// IDs returns the ids of the ring's keys, in increasing order.
func (r *KeyRing) IDs() []uint32 {
	s := r.set.Load()
	if s == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(s.aeads))
}

// String describes the ring by its key ids; it never shows a key.
func (r *KeyRing) String() string {
	if r == nil {
		return "cacheaside.KeyRing(nil)"
	}
	return fmt.Sprintf("cacheaside.KeyRing{primary: %d, ids: %v}", r.Primary(), r.IDs())
}

// GoString is String: a key ring never prints its keys.
func (r *KeyRing) GoString() string { return r.String() }

// Format prints String for every verb: a key ring never prints its keys.
func (r *KeyRing) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(r.String())) }

// A sealed payload (the payload of a frame with envelope.FlagEncrypted) is
//
//	0..3   id of the key that sealed it (uint32, big-endian)
//	4..15  random nonce
//	16..   AES-256-GCM ciphertext of the plaintext payload, then its 16-byte tag
//
// with the frame's header and the full store key as additional authenticated data.
const (
	keyIDSize    = 4
	sealOverhead = 12 + 16 // nonce and tag, as cipher.NewGCMWithRandomNonce lays them out
	sealedAt     = envelope.HeaderSize + keyIDSize
)

var errUnsealed = errors.New("cacheaside: value does not open")

// seal turns buf, a frame whose header is final and whose plaintext payload starts at sealedAt
// (the key id's bytes before it are reserved), into the sealed frame for store key sk.
func (s *keySet) seal(buf []byte, sk string) []byte {
	n := len(buf) - sealedAt
	end := sealedAt + n + sealOverhead
	aadLen := envelope.HeaderSize + len(sk)
	buf = slices.Grow(buf, sealOverhead+aadLen)
	binary.BigEndian.PutUint32(buf[envelope.HeaderSize:], s.primary)
	aad := buf[end : end+aadLen] // past the sealed frame: Seal's output never touches it
	copy(aad, buf[:envelope.HeaderSize])
	copy(aad[envelope.HeaderSize:], sk)
	// A nil nonce: the AEAD is NewGCMWithRandomNonce, which draws its own (G407 misreads it).
	return s.aeads[s.primary].Seal(buf[:sealedAt:end], nil, buf[sealedAt:sealedAt+n], aad) //nolint:gosec
}

// open returns the plaintext payload of the sealed frame for store key sk, in a new buffer, or
// an error if it does not open: a key id the ring does not hold, or any byte of the frame or
// key not as sealed.
func (s *keySet) open(frame []byte, sk string) ([]byte, error) {
	p := frame[envelope.HeaderSize:]
	if len(p) < keyIDSize+sealOverhead {
		return nil, errUnsealed
	}
	aead, ok := s.aeads[binary.BigEndian.Uint32(p)]
	if !ok {
		return nil, errUnsealed
	}
	ct := p[keyIDSize:]
	n := len(ct) - sealOverhead
	buf := make([]byte, n+envelope.HeaderSize+len(sk))
	aad := buf[n:] // past the plaintext: Open may use dst up to its capacity, which ends at n
	copy(aad, frame[:envelope.HeaderSize])
	copy(aad[envelope.HeaderSize:], sk)
	out, err := aead.Open(buf[:0:n], nil, ct, aad)
	if err != nil {
		return nil, errUnsealed
	}
	return out, nil
}
