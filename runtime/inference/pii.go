package inference

import (
	"regexp"
	"slices"
	"strings"

	"github.com/openshell/openshell/policyhook/policy"
)

// The PII detectors. Each is a pure function of the text, linear in its
// length (RE2 regular expressions, and a scan of digit runs whose window
// is at most 19 digits), and aims for few false positives: a number must
// have the shape people write, not merely enough digits. What each
// matches:
//
//   - ssn: AAA-GG-SSSS or AAA GG SSSS (one separator, the same twice),
//     not inside a longer run of digit groups joined by that separator,
//     with area not 000, 666 or 900-999, group not 00, serial not 0000.
//     Nine bare digits are not matched.
//   - credit_card: 13 to 19 digits, first digit 2-6 (Visa, Mastercard,
//     Amex, Discover, JCB, Diners, UnionPay, Maestro), bare or in groups
//     joined by single spaces or dashes, passing the Luhn check. The
//     groups are whole: digits are never taken from the middle of a
//     group, so a longer number is not matched for a valid part of it.
//   - email: local@domain.tld: local part of letters, digits and
//     ._%+-, domain labels of letters, digits and -, a top-level domain
//     of two or more letters.
//   - phone: E.164 (+ then 8 to 15 digits, the first 1-9, optionally in
//     groups joined by single spaces or dashes), and NANP numbers written
//     with separators: (NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX,
//     NXX NXX XXXX, each optionally after 1 or +1 (N is 2-9). Ten bare
//     digits are not matched.
//
// None is preceded or followed by a letter, a digit or (for the numbers)
// a joining separator and another digit. ASCII digits only: text that
// spells a number otherwise (words, full-width digits, base64) is not
// recognised. The detectors catch what an agent sends by accident, not
// what one hides on purpose.

// Match is one detected span of a text: text[Start:End] is detector
// Detector's.
type Match struct {
	Detector   string
	Start, End int
}

var (
	digitRunRE = regexp.MustCompile(`[0-9]+(?:[ -][0-9]+)*`)
	emailRE    = regexp.MustCompile(`[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}`)
	phoneRE    = regexp.MustCompile(`(?:(?:\+1[ .-]?|1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4})|\+[1-9](?:[ -]?[0-9]){7,14}`)
)

// Detect finds the matches of the named detectors in text, without
// overlaps (where two overlap, the one that starts first wins; at the
// same start, the longer), in order.
func Detect(text string, detectors []string) []Match {
	var all []Match
	for _, d := range detectors {
		switch d {
		case policy.DetectSSN:
			all = append(all, findSSN(text)...)
		case policy.DetectCreditCard:
			all = append(all, findCards(text)...)
		case policy.DetectEmail:
			all = append(all, findEmail(text)...)
		case policy.DetectPhone:
			all = append(all, findPhone(text)...)
		}
	}
	slices.SortFunc(all, func(a, b Match) int {
		if a.Start != b.Start {
			return a.Start - b.Start
		}
		return b.End - a.End
	})
	out := all[:0]
	end := 0
	for _, m := range all {
		if m.Start >= end {
			out = append(out, m)
			end = m.End
		}
	}
	return out
}

// Redact replaces each match with [REDACTED:DETECTOR].
func Redact(text string, matches []Match) string {
	if len(matches) == 0 {
		return text
	}
	var b strings.Builder
	b.Grow(len(text))
	last := 0
	for _, m := range matches {
		b.WriteString(text[last:m.Start])
		b.WriteString("[REDACTED:" + m.Detector + "]")
		last = m.End
	}
	b.WriteString(text[last:])
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isWordByte(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

// bounded reports whether text[start:end] stands alone: no letter or
// digit touches it, and no separator joins it to another digit.
func bounded(text string, start, end int, joiners string) bool {
	if start > 0 {
		c := text[start-1]
		if isWordByte(c) || start > 1 && strings.IndexByte(joiners, c) >= 0 && isDigit(text[start-2]) {
			return false
		}
	}
	if end < len(text) {
		c := text[end]
		if isWordByte(c) || end+1 < len(text) && strings.IndexByte(joiners, c) >= 0 && isDigit(text[end+1]) {
			return false
		}
	}
	return true
}

// group is one group of digits of a run, and the separator before it (0
// for the first).
type group struct {
	start, end int
	sep        byte
}

// digitRuns yields the runs of digit groups joined by single spaces or
// dashes that stand alone (no letter touches them).
func digitRuns(text string, yield func(groups []group)) {
	var gs []group
	for _, loc := range digitRunRE.FindAllStringIndex(text, -1) {
		if loc[0] > 0 && isWordByte(text[loc[0]-1]) || loc[1] < len(text) && isWordByte(text[loc[1]]) {
			continue
		}
		gs = gs[:0]
		start := loc[0]
		var sep byte
		for i := loc[0]; i <= loc[1]; i++ {
			if i == loc[1] || !isDigit(text[i]) {
				gs = append(gs, group{start, i, sep})
				if i < loc[1] {
					sep, start = text[i], i+1
				}
			}
		}
		yield(gs)
	}
}

func findSSN(text string) []Match {
	var out []Match
	digitRuns(text, func(gs []group) {
		for i := 0; i+2 < len(gs); i++ {
			a, g, s := gs[i], gs[i+1], gs[i+2]
			if a.end-a.start != 3 || g.end-g.start != 2 || s.end-s.start != 4 || g.sep != s.sep {
				continue
			}
			// Not part of a longer number joined the same way.
			if i > 0 && a.sep == g.sep || i+3 < len(gs) && gs[i+3].sep == g.sep {
				continue
			}
			if validSSN(text[a.start:a.end], text[g.start:g.end], text[s.start:s.end]) && bounded(text, a.start, s.end, ".") {
				out = append(out, Match{policy.DetectSSN, a.start, s.end})
				i += 2
			}
		}
	})
	return out
}

// validSSN: the Social Security Administration never issues area 000,
// 666 or 900-999, group 00 or serial 0000.
func validSSN(area, group, serial string) bool {
	return area != "000" && area != "666" && area[0] != '9' && group != "00" && serial != "0000"
}

// findCards looks for a card number among the groups of each run: the
// longest sequence of whole groups, from the leftmost start, of 13 to 19
// digits that passes the Luhn check.
func findCards(text string) []Match {
	var out []Match
	digitRuns(text, func(gs []group) {
		for i := 0; i < len(gs); i++ {
			if c := text[gs[i].start]; c < '2' || c > '6' {
				continue
			}
			best, n := -1, 0
			for j := i; j < len(gs); j++ {
				if n += gs[j].end - gs[j].start; n > 19 {
					break
				}
				if n >= 13 && luhn(text[gs[i].start:gs[j].end]) {
					best = j
				}
			}
			if best >= 0 {
				out = append(out, Match{policy.DetectCreditCard, gs[i].start, gs[best].end})
				i = best
			}
		}
	})
	return out
}

// luhn checks the Luhn digit of s, skipping its separators.
func luhn(s string) bool {
	sum, double := 0, false
	for i := len(s) - 1; i >= 0; i-- {
		c := s[i]
		if !isDigit(c) {
			continue
		}
		d := int(c - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

func findEmail(text string) []Match {
	var out []Match
	for _, loc := range emailRE.FindAllStringIndex(text, -1) {
		// A top-level domain runs to a non-letter: "a@b.comx1" is no
		// address, and neither is one inside a longer domain-like word.
		if loc[1] < len(text) && (isWordByte(text[loc[1]]) || text[loc[1]] == '-') {
			continue
		}
		out = append(out, Match{policy.DetectEmail, loc[0], loc[1]})
	}
	return out
}

func findPhone(text string) []Match {
	var out []Match
	for _, loc := range phoneRE.FindAllStringIndex(text, -1) {
		if bounded(text, loc[0], loc[1], " .-") {
			out = append(out, Match{policy.DetectPhone, loc[0], loc[1]})
		}
	}
	return out
}
