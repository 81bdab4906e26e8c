package inference

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/openshell/openshell/policyhook/policy"
)

// found is what Detect reports, as detector:text pairs.
func found(text string, detectors ...string) []string {
	var out []string
	for _, m := range Detect(text, detectors) {
		out = append(out, m.Detector+":"+text[m.Start:m.End])
	}
	return out
}

func TestDetectors(t *testing.T) {
	all := policy.PIIDetectors
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		// SSN
		{"ssn", "my ssn is 123-45-6789.", []string{"ssn:123-45-6789"}},
		{"ssn-spaces", "SSN: 123 45 6789", []string{"ssn:123 45 6789"}},
		{"ssn-then-year", "ssn 123-45-6789 2024", []string{"ssn:123-45-6789"}},
		{"ssn-area-000", "000-12-3456", nil},
		{"ssn-area-666", "666-12-3456", nil},
		{"ssn-area-9xx", "912-12-3456", nil},
		{"ssn-group-00", "123-00-4567", nil},
		{"ssn-serial-0000", "123-45-0000", nil},
		{"ssn-mixed-separators", "123-45 6789", nil},
		{"ssn-bare", "123456789", nil},
		{"ssn-in-longer", "1123-45-6789 and 123-45-6789-1 and x123-45-6789", nil},
		{"ssn-dotted", "v1.123-45-6789", nil},
		// Credit cards
		{"visa", "card 4111111111111111 exp 12/29", []string{"credit_card:4111111111111111"}},
		{"visa-spaced", "4111 1111 1111 1111", []string{"credit_card:4111 1111 1111 1111"}},
		{"mastercard-dashed", "5555-5555-5555-4444", []string{"credit_card:5555-5555-5555-4444"}},
		{"amex", "amex 3782 822463 10005", []string{"credit_card:3782 822463 10005"}},
		{"card-then-year", "4111111111111111 2029", []string{"credit_card:4111111111111111"}},
		{"luhn-invalid", "4111 1111 1111 1112", nil},
		{"too-short", "411111111111", nil},
		{"too-long", "41111111111111111111", nil},
		{"first-digit", "0000000000000000 1000000000000009", nil},
		{"inside-word", "id4111111111111111 4111111111111111x", nil},
		{"double-separator", "4111  1111  1111  1111", nil},
		// E-mail
		{"email", "write to jane.doe+ai@example.co.uk now", []string{"email:jane.doe+ai@example.co.uk"}},
		{"email-no-tld", "user@localhost", nil},
		{"email-bad-tld", "a@b.c1", nil},
		{"email-at-only", "@handle and a@ and @b.com", nil},
		// Phones
		{"e164", "call +14155552671", []string{"phone:+14155552671"}},
		{"e164-uk", "tel +44 20 7946 0958.", []string{"phone:+44 20 7946 0958"}},
		{"nanp-parens", "(415) 555-2671", []string{"phone:(415) 555-2671"}},
		{"nanp-dashes", "415-555-2671", []string{"phone:415-555-2671"}},
		{"nanp-dots", "415.555.2671", []string{"phone:415.555.2671"}},
		{"nanp-spaces", "415 555 2671", []string{"phone:415 555 2671"}},
		{"nanp-one", "1-800-555-0199", []string{"phone:1-800-555-0199"}},
		{"nanp-plus-one", "+1 (415) 555-2671", []string{"phone:+1 (415) 555-2671"}},
		{"nanp-bare", "4155552671", nil},
		{"nanp-area-1", "115-555-2671", nil},
		{"nanp-exchange-1", "415-155-2671", nil},
		{"e164-short", "+1234567", nil},
		{"date", "2024-05-12 and 12.05.2024 and 10:30", nil},
		{"version", "v1.2.3 and 3.14159265358979", nil},
		{"ip", "192.168.100.200", nil},
		// Several.
		{"several", "SSN 123-45-6789, card 4111-1111-1111-1111, mail a@b.io, phone 415-555-2671",
			[]string{"ssn:123-45-6789", "credit_card:4111-1111-1111-1111", "email:a@b.io", "phone:415-555-2671"}},
		{"nothing", "What is the capital of France? Answer in 3 words, 2 sentences.", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := found(tc.text, all...); !slices.Equal(got, tc.want) {
				t.Errorf("Detect(%q) = %q, want %q", tc.text, got, tc.want)
			}
		})
	}
}

func TestDetectOnlyTheNamed(t *testing.T) {
	text := "a@b.io 4111111111111111"
	if got := found(text, policy.DetectEmail); !slices.Equal(got, []string{"email:a@b.io"}) {
		t.Errorf("email only: %q", got)
	}
	if got := found(text, policy.DetectSSN, policy.DetectPhone); got != nil {
		t.Errorf("ssn and phone: %q", got)
	}
}

func TestRedact(t *testing.T) {
	text := "card 4111 1111 1111 1111, mail jane@example.com."
	got := Redact(text, Detect(text, policy.PIIDetectors))
	if want := "card [REDACTED:credit_card], mail [REDACTED:email]."; got != want {
		t.Errorf("Redact = %q, want %q", got, want)
	}
}

func TestLuhn(t *testing.T) {
	for s, want := range map[string]bool{
		"4111111111111111": true, "4111-1111-1111-1111": true, "378282246310005": true, "6011111111111117": true,
		"4111111111111112": false, "1234567812345678": false,
	} {
		if luhn(s) != want {
			t.Errorf("luhn(%q) = %v", s, !want)
		}
	}
}

// TestDetectLinear: a large adversarial text is scanned in one pass (a
// quadratic scan of 1 MiB would take minutes).
func TestDetectLinear(t *testing.T) {
	for _, unit := range []string{"1 ", "1-", "a.", "a@", "+1", "4111 ", "123-45-"} {
		text := strings.Repeat(unit, (1<<20)/len(unit))
		Detect(text, policy.PIIDetectors)
	}
}

// FuzzDetect: matches are in order, within the text, never overlapping,
// of a named detector; redacting them leaves nothing to find.
func FuzzDetect(f *testing.F) {
	for _, s := range []string{"123-45-6789", "4111 1111 1111 1111", "a@b.io", "+1 (415) 555-2671", "x", "1-2-3-4-5-6-7-8-9-0-1-2-3-4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ms := Detect(text, policy.PIIDetectors)
		end := 0
		for _, m := range ms {
			if m.Start < end || m.End <= m.Start || m.End > len(text) || !slices.Contains(policy.PIIDetectors, m.Detector) {
				t.Fatalf("bad match %+v in %q", m, text)
			}
			end = m.End
		}
		out := Redact(text, ms)
		if utf8.ValidString(text) && !utf8.ValidString(out) {
			t.Fatalf("redaction broke UTF-8: %q", out)
		}
		if again := Detect(out, policy.PIIDetectors); len(ms) > 0 && len(again) > 0 {
			// A redaction marker may join what was around it into a
			// new match only by sitting next to it: never the same span.
			for _, m := range again {
				if strings.Contains(out[m.Start:m.End], "[REDACTED:") {
					t.Fatalf("a match spans a redaction marker: %q in %q", out[m.Start:m.End], out)
				}
			}
		}
	})
}
