// Package glob matches keys against Redis glob patterns, as SCAN MATCH and KEYS do, and escapes
// literal text for use inside such a pattern.
package glob

import "strings"

// maxNesting is Redis's bound on the '*' recursion of stringmatchlen: a match that must pass
// more than this many '*' runs (not counting one that ends the pattern) fails in Redis.
const maxNesting = 1000

// Match reports whether s matches the Redis glob pattern, exactly as SCAN MATCH and KEYS
// decide it (Redis's stringmatchlen): '*' any run of bytes, '?' one byte, '[abc]', '[^abc]'
// and '[a-z]' classes (a reversed range counts, '\' escapes inside a class, an unclosed class
// runs to the end of the pattern), '\' escapes the next byte. It works on bytes.
//
// It takes time O(len(pattern) × len(s)) at worst, never exponential, allocates nothing and
// never panics. Redis's edge cases are kept: a pattern other than "" never matches the empty
// key, except "*", which SCAN and KEYS treat as "everything"; and a pattern needing more than
// 1000 nested '*' never matches.
func Match(pattern, s string) bool {
	if pattern == "*" {
		return true // SCAN and KEYS skip matching altogether for "*"
	}
	if len(s) == 0 {
		return len(pattern) == 0 // stringmatchlen's loop never runs on an empty string
	}
	return match(pattern, s) && starRuns(pattern) <= maxNesting
}

// match is the greedy-star matcher: each token other than '*' consumes one byte, so on a
// mismatch only the last '*' needs to take one more byte and the pattern after it restart.
// Earlier '*'s never need to grow: whatever the later one can reach from a shorter start, it
// reaches from a longer one too.
func match(p, s string) bool {
	pi, si := 0, 0
	star, starS := -1, 0 // the pattern just after the last '*' run, and where s resumed then
	for si < len(s) {
		if pi < len(p) && p[pi] == '*' {
			for pi < len(p) && p[pi] == '*' {
				pi++
			}
			if pi == len(p) {
				return true // a final '*' takes the rest
			}
			star, starS = pi, si
			continue
		}
		if pi < len(p) {
			if ok, next := one(p, pi, s[si]); ok {
				pi, si = next, si+1
				continue
			}
		}
		if star < 0 {
			return false
		}
		starS++
		pi, si = star, starS
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// one matches the byte c against the token (not '*') at p[i], and returns the index after
// the token.
func one(p string, i int, c byte) (bool, int) {
	switch p[i] {
	case '?':
		return true, i + 1
	case '[':
		return class(p, i+1, c)
	case '\\':
		if i+1 < len(p) {
			i++
		}
	}
	return p[i] == c, i + 1
}

// class matches c against the class whose body starts at p[j] (just after '['), step for
// step as stringmatchlen does, and returns the index after the closing ']' (or len(p) for an
// unclosed class). A '-' right before the closing ']' still makes a range ending at ']', as in
// Redis: "[a-]" is the unclosed class of ']'..'a'.
func class(p string, j int, c byte) (bool, int) {
	not := j < len(p) && p[j] == '^'
	if not {
		j++
	}
	match := false
	for {
		switch {
		case j+1 < len(p) && p[j] == '\\':
			j++
			if p[j] == c {
				match = true
			}
		case j < len(p) && p[j] == ']':
			return match != not, j + 1
		case j >= len(p):
			return match != not, len(p)
		case len(p)-j >= 3 && p[j+1] == '-':
			lo, hi := p[j], p[j+2]
			if lo > hi {
				lo, hi = hi, lo
			}
			if c >= lo && c <= hi {
				match = true
			}
			j += 2
		default:
			if p[j] == c {
				match = true
			}
		}
		j++
	}
}

// starRuns counts the runs of '*' tokens that are not at the end of p: how deep Redis's
// stringmatchlen recurses on a successful match.
func starRuns(p string) int {
	n := 0
	for i := 0; i < len(p); {
		if p[i] != '*' {
			_, i = one(p, i, 0)
			continue
		}
		for i < len(p) && p[i] == '*' {
			i++
		}
		if i < len(p) {
			n++
		}
	}
	return n
}

// Escape returns s with every glob metacharacter escaped, so that it matches only itself.
func Escape(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
