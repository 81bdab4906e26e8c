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
// its wildcard and the name under it.
func SplitHostPattern(pattern string) (base string, w Wildcard) {
	if rest, ok := strings.CutPrefix(pattern, anyDepthPrefix); ok {
		return rest, AnyDepth
	}
	if rest, ok := strings.CutPrefix(pattern, oneLabelPrefix); ok {
		return rest, OneLabel
	}
	return pattern, NoWildcard
}

// HostMatches reports whether the normalised name is covered by the
// normalised pattern. The egress matcher answers the same questions from
// hash tables; this is the definition it is tested against.
func HostMatches(pattern, name string) bool {
	base, w := SplitHostPattern(pattern)
	switch w {
	case NoWildcard:
		return name == base
	}
	head, ok := strings.CutSuffix(name, "."+base)
	if !ok || head == "" {
		return false
	}
	return w == AnyDepth || !strings.Contains(head, ".")
}

// NormalizeHostPattern validates an egress rule's host and returns it in
// normal form: a host name (NormalizeHost), or "*." (one label) or "**."
// (any depth) followed by one. A wildcard must sit under a registrable
// domain: never over a single label ("*.com", "**.internal") nor over a
// public suffix ("*.co.uk"). The error reads as a field message.
func NormalizeHostPattern(host string) (string, error) {
	switch {
	case host == "":
		return "", errors.New("is required")
	case strings.Contains(host, "://"):
		return "", fmt.Errorf("%s has a scheme; write the host name alone", quoteHost(host))
	case strings.ContainsAny(host, "/?#@"):
		return "", fmt.Errorf("%s is not a host name", quoteHost(host))
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return "", fmt.Errorf("%q is an IP address; egress rules name hosts, and raw addresses go in allowed_ips", host)
	}
	if strings.Contains(host, ":") {
		return "", fmt.Errorf("%s has a port; use the port field", quoteHost(host))
	}
	prefix, name := "", host
	if rest, ok := strings.CutPrefix(host, anyDepthPrefix); ok {
		prefix, name = anyDepthPrefix, rest
	} else if rest, ok := strings.CutPrefix(host, oneLabelPrefix); ok {
		prefix, name = oneLabelPrefix, rest
	}
	if strings.Contains(name, "*") {
		return "", fmt.Errorf("%s: the only wildcards allowed are a leading \"*.\" (one label) or \"**.\" (any depth)", quoteHost(host))
	}
	norm, err := NormalizeHost(name)
	if err != nil {
		return "", err
	}
	if prefix != "" {
		if !strings.Contains(norm, ".") {
			return "", fmt.Errorf("%q: a wildcard must sit above a registered domain, e.g. %sexample.com", host, prefix)
		}
		if suffix, icann := publicsuffix.PublicSuffix(norm); icann && suffix == norm {
			return "", fmt.Errorf("%q: %s is a public suffix; a wildcard must sit above a registered domain, e.g. %sexample.%s", host, norm, prefix, norm)
		}
	}
	return prefix + norm, nil
}
