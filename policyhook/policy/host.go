package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// Host names are compared in one form only, the one NormalizeHost returns:
// the validator stores it in EgressRule.Host and the egress matcher puts
// every name it is asked about through the same function, so that
// "Example.COM.", "example.com" and "bücher.example" (as "xn--bcher-kva.example")
// can never be told apart by one side and not the other.

// Wildcard is how many labels a host pattern's wildcard covers.
type Wildcard int

const (
	// NoWildcard: the pattern is one host name.
	NoWildcard Wildcard = iota
	// OneLabel: "*.example.com" covers a.example.com, not a.b.example.com
	// and not example.com (NVIDIA OpenShell's "*.").
	OneLabel
	// AnyDepth: "**.example.com" covers a.example.com and a.b.example.com,
	// not example.com (NVIDIA OpenShell's "**.").
	AnyDepth
	// Labels: any other wildcard NVIDIA OpenShell writes, matched label by
	// label (HostMatches): a "*" inside the first label
	// ("*-aiplatform.googleapis.com" covers us-central1-aiplatform.googleapis.com,
	// never a.b-aiplatform.googleapis.com), or a whole "*" label below the
	// first ("s3.*.amazonaws.com").
	Labels
)

// The prefixes that write a Wildcard in a pattern.
const (
	oneLabelPrefix = "*."
	anyDepthPrefix = "**."
)

const (
	maxHostLen  = 253 // RFC 1035, without the root's trailing dot
	maxLabelLen = 63
)

// hostProfile maps a name the way a resolver looks it up (UTS #46:
// case folding, width and compatibility mappings, NFC), checks the bidi
// and joiner rules and every xn-- label, and writes the result in ASCII.
// STD3 rules and the hyphen check are off on purpose: real names carry
// "_" (service labels) and "--" in the third and fourth place
// (r3---sn-x.googlevideo.com); checkLabel decides which ASCII is allowed.
var hostProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
)

// NormalizeHost returns the one form a host name is compared in: ASCII
// (IDNA), lower case, without the root's trailing dot. It refuses what is
// not a DNS name: an empty name or label, a label over 63 bytes, a name
// over 253, control characters, spaces, and any ASCII but letters, digits,
// "-" (not first or last in a label) and "_". It never accepts a
// wildcard; see NormalizeHostPattern. Its errors quote the name with
// control characters escaped. NormalizeHost(NormalizeHost(h)) == NormalizeHost(h).
func NormalizeHost(name string) (string, error) {
	if name == "" {
		return "", errors.New("the host name is empty")
	}
	// Bound the work before IDNA sees it: no mapping shrinks a name of
	// this size to 253 bytes.
	if len(name) > 4*maxHostLen {
		return "", fmt.Errorf("%s is longer than %d characters", quoteHost(name), maxHostLen)
	}
	if !utf8.ValidString(name) {
		return "", fmt.Errorf("%q is not valid UTF-8", name)
	}
	for _, r := range name {
		switch {
		case unicode.IsControl(r):
			return "", fmt.Errorf("%q contains a control character", name)
		case unicode.IsSpace(r):
			return "", fmt.Errorf("%q contains a space", name)
		}
	}
	ascii := strings.ToLower(name)
	if !isASCII(ascii) || strings.Contains(ascii, "xn--") {
		a, err := hostProfile.ToASCII(name)
		if err != nil {
			return "", fmt.Errorf("%q is not a valid internationalised domain name (IDNA)", name)
		}
		// The mapping can turn a name into one whose ASCII form the same
		// rules refuse ("0ℷ" maps to a right-to-left label starting with
		// a digit): a rule stored in that form would never match a name
		// asked in it. Only forms that validate again are kept.
		if again, err := hostProfile.ToASCII(a); err != nil || again != a {
			return "", fmt.Errorf("%q is not a valid internationalised domain name (IDNA): its ASCII form %q does not validate", name, a)
		}
		ascii = a
	}
	ascii = strings.TrimSuffix(ascii, ".")
	if len(ascii) > maxHostLen {
		return "", fmt.Errorf("%s is longer than %d characters", quoteHost(name), maxHostLen)
	}
	for label := range strings.SplitSeq(ascii, ".") {
		if msg := checkLabel(label); msg != "" {
			return "", fmt.Errorf("%q is not a valid host name (%s)", name, msg)
		}
	}
	return ascii, nil
}

func checkLabel(label string) string {
	switch {
	case label == "":
		return "empty label"
	case len(label) > maxLabelLen:
		return fmt.Sprintf("a label is longer than %d characters", maxLabelLen)
	case label[0] == '-' || label[len(label)-1] == '-':
		return fmt.Sprintf("label %q", label)
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return fmt.Sprintf("label %q", label)
		}
	}
	return ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// quoteHost quotes at most the start of a long name.
func quoteHost(s string) string {
	const keep = 64
	if len(s) <= keep {
		return fmt.Sprintf("%q", s)
	}
	cut := keep
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q...", s[:cut])
}

// SplitHostPattern splits a normalised pattern (EgressRule.Host) into
// its wildcard and the literal name under it: for Labels, the name after
// the last label that holds a "*" ("googleapis.com" for
// "*-aiplatform.googleapis.com", "amazonaws.com" for "s3.*.amazonaws.com").
func SplitHostPattern(pattern string) (base string, w Wildcard) {
	if !strings.Contains(pattern, "*") {
		return pattern, NoWildcard
	}
	if rest, ok := strings.CutPrefix(pattern, anyDepthPrefix); ok && !strings.Contains(rest, "*") {
		return rest, AnyDepth
	}
	if rest, ok := strings.CutPrefix(pattern, oneLabelPrefix); ok && !strings.Contains(rest, "*") {
		return rest, OneLabel
	}
	last := strings.LastIndexByte(pattern, '*')
	if dot := strings.IndexByte(pattern[last:], '.'); dot >= 0 {
		return pattern[last+dot+1:], Labels
	}
	return "", Labels // not a normal form: nothing sits under it
}

// HostMatches reports whether the normalised name is covered by the
// normalised pattern, label by label from the right: a literal label
// matches itself, a label with one "*" any label that starts and ends as
// it does (the "*" stands for zero or more characters, never a dot), and
// a first label "**" one or more labels. The egress matcher answers the
// same questions from hash tables; this is the definition it is tested
// against. It allocates nothing.
func HostMatches(pattern, name string) bool {
	if pattern == "" || name == "" {
		return false
	}
	for {
		pi, ni := strings.LastIndexByte(pattern, '.'), strings.LastIndexByte(name, '.')
		pl, nl := pattern[pi+1:], name[ni+1:]
		if pl == "**" && pi < 0 {
			return nl != "" // one or more labels are left
		}
		if !labelMatches(pl, nl) {
			return false
		}
		if pi < 0 || ni < 0 {
			return pi < 0 && ni < 0
		}
		pattern, name = pattern[:pi], name[:ni]
	}
}

// labelMatches matches one label against one pattern label, which holds
// at most one "*".
func labelMatches(p, label string) bool {
	if label == "" {
		return false
	}
	before, after, wild := strings.Cut(p, "*")
	if !wild {
		return p == label
	}
	return len(label) >= len(before)+len(after) && strings.HasPrefix(label, before) && strings.HasSuffix(label, after)
}

// NormalizeHostPattern validates an egress rule's host and returns it in
// normal form: a host name (NormalizeHost), or one with wildcards, as
// NVIDIA OpenShell writes them: "*." (one label) or "**." (any depth)
// before a name, a "*" inside the first label ("*-api.example.com",
// "api-*.example.com"), and a whole "*" label below the first
// ("s3.*.amazonaws.com"). A label holds at most one "*". Whatever the
// wildcard, the literal name after the last wildcard label must be a
// registrable domain: never a single label ("*.com", "api-*.com") nor a
// public suffix ("*.co.uk"). The error reads as a field message.
func NormalizeHostPattern(host string) (string, error) {
	switch {
	case host == "":
		return "", errors.New("is required")
	case strings.Contains(host, "://"):
		return "", fmt.Errorf("%s has a scheme; write the host name alone", quoteHost(host))
	case strings.ContainsAny(host, "?[]{}") && !strings.HasPrefix(host, "[") && !hasControl(host):
		return "", fmt.Errorf("%s: the only wildcard is \"*\" (no ?, [...] or {...}); list each host separately", quoteHost(host))
	case strings.ContainsAny(host, "/?#@"):
		return "", fmt.Errorf("%s is not a host name", quoteHost(host))
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return "", fmt.Errorf("%q is an IP address; egress rules name hosts, and raw addresses go in allowed_ips", host)
	}
	if strings.Contains(host, ":") {
		return "", fmt.Errorf("%s has a port; use the port field", quoteHost(host))
	}
	last := strings.LastIndexByte(host, '*')
	if last < 0 {
		return NormalizeHost(host)
	}
	dot := strings.IndexByte(host[last:], '.')
	if dot < 0 || strings.Trim(host[last+dot:], ".") == "" {
		if strings.Trim(host, "*.") == "" {
			return "", fmt.Errorf("%q matches every host; name a domain, e.g. *.example.com", host)
		}
		return "", fmt.Errorf("%q: a wildcard in the last label (the top-level domain) spans every domain; name a domain, e.g. *.example.com", host)
	}
	head, tail := host[:last+dot], host[last+dot+1:]
	base, err := NormalizeHost(tail)
	if err != nil {
		return "", err
	}
	labels := strings.Split(head, ".")
	for i, l := range labels {
		switch {
		case l == "":
			return "", fmt.Errorf("%q is not a valid host name (empty label)", host)
		case l == "**" && i == 0:
			continue
		case strings.Contains(l, "**"):
			return "", fmt.Errorf("%q: \"**\" must be the whole first label (\"**.example.com\", any depth)", host)
		case strings.Count(l, "*") > 1:
			return "", fmt.Errorf("%q: a label holds at most one \"*\"", host)
		case strings.Contains(l, "*"):
			if i > 0 && l != "*" {
				return "", fmt.Errorf("%q: below the first label a wildcard must be a whole label (\"s3.*.example.com\"); only the first label may hold \"*\" with other characters (\"api-*.example.com\")", host)
			}
			norm, msg := normalizeWildLabel(l)
			if msg != "" {
				return "", fmt.Errorf("%q is not a valid host pattern (%s)", host, msg)
			}
			labels[i] = norm
		default:
			norm, err := NormalizeHost(l)
			if err != nil {
				return "", err
			}
			if strings.Contains(norm, ".") {
				return "", fmt.Errorf("%q is not a valid host pattern (label %q)", host, l)
			}
			labels[i] = norm
		}
	}
	prefix := strings.Join(labels, ".") + "."
	if !strings.Contains(base, ".") {
		return "", fmt.Errorf("%q: a wildcard must sit above a registered domain, e.g. %sexample.com", host, prefix)
	}
	if suffix, icann := publicsuffix.PublicSuffix(base); icann && suffix == base {
		return "", fmt.Errorf("%q: %s is a public suffix; a wildcard must sit above a registered domain, e.g. %sexample.%s", host, base, prefix, base)
	}
	if out := prefix + base; len(out) <= maxHostLen {
		return out, nil
	}
	return "", fmt.Errorf("%s is longer than %d characters", quoteHost(host), maxHostLen)
}

// normalizeWildLabel lower-cases a label holding one "*" and says what is
// wrong with it, if anything: the characters around the "*" follow the
// rules of checkLabel, and must be ASCII (write an internationalised label
// in its xn-- form).
func normalizeWildLabel(l string) (string, string) {
	if !isASCII(l) {
		return "", fmt.Sprintf("label %q: a label with a wildcard must be ASCII; write an internationalised name in its xn-- form", l)
	}
	l = strings.ToLower(l)
	before, after, _ := strings.Cut(l, "*")
	switch {
	case len(before)+len(after) > maxLabelLen:
		return "", fmt.Sprintf("a label is longer than %d characters", maxLabelLen)
	case strings.HasPrefix(before, "-") || strings.HasSuffix(after, "-"):
		return "", fmt.Sprintf("label %q: a label cannot start or end with \"-\"", l)
	}
	for i := 0; i < len(before)+len(after); i++ {
		c := (before + after)[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return "", fmt.Sprintf("label %q", l)
		}
	}
	return l, ""
}
