package glob

import "testing"

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"user:*", "user:1", true},
		{"user:*", "usr:1", false},
		{"h?llo", "hello", true},
		{"h?llo", "hllo", false},
		{"h[ae]llo", "hallo", true},
		{"h[ae]llo", "hillo", false},
		{"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hallo", true},
		{`a\*b`, "a*b", true},
		{`a\*b`, "axb", false},
		{"a**b", "ab", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"[", "x", false},
		{"[abc", "a", true},
		{`\`, `\`, true},
		{"", "", true},
		{"", "x", false},
	}
	for _, c := range cases {
		if got := Match(c.pattern, c.s); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}

func TestEscape(t *testing.T) {
	for _, s := range []string{"plain:", "a*b", "[x]?", `back\slash`, "*"} {
		e := Escape(s)
		if !Match(e, s) {
			t.Errorf("Escape(%q) = %q does not match itself", s, e)
		}
		if s != "plain:" && Match(e, s+"x") {
			t.Errorf("Escape(%q) = %q matches more than itself", s, e)
		}
		if !Match(e+"*", s+"tail") {
			t.Errorf("Escape(%q)+* does not match %q", s, s+"tail")
		}
	}
	if Match(Escape("a*")+"*", "abc") {
		t.Error(`escaped "a*" prefix matched "abc"`)
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("a*[b-c]?\\", "abcd")
	f.Fuzz(func(t *testing.T, p, s string) {
		Match(p, s)
		if !Match(Escape(s), s) {
			t.Fatalf("Escape(%q) does not match itself", s)
		}
	})
}
