package inference

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/openshell/openshell/policyhook/policy"
)

// The routes a call can take.
const (
	RouteCloud = "cloud" // the policy's routing_endpoint or provider
	RouteLocal = "local" // the privacy route (sandbox.inference.local)
)

// contentFields are the request fields that hold message contents, per
// API; nothing else of a request (the model, ids, metadata, tools) is
// read by the detectors.
var contentFields = map[string][]string{
	policy.APIChatCompletions: {"messages"},
	policy.APICompletions:     {"prompt"},
	policy.APIResponses:       {"instructions", "input"},
	policy.APIEmbeddings:      {"input"},
	policy.APIMessages:        {"system", "messages"},
}

// textPartTypes are the content parts whose "text" is message content:
// OpenAI chat (text), responses (input_text, output_text), Anthropic
// (text).
var textPartTypes = []string{"text", "input_text", "output_text"}

// content is a request's message contents, decoded to be read and, when
// redacted, written back.
type content struct {
	doc    map[string]json.RawMessage
	fields map[string]any // decoded content fields
	api    string
}

func newContent(doc map[string]json.RawMessage, api string) *content {
	c := &content{doc: doc, fields: map[string]any{}, api: api}
	for _, f := range contentFields[api] {
		raw, ok := doc[f]
		if !ok {
			continue
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber() // numbers are written back as they came
		var v any
		if d.Decode(&v) == nil {
			c.fields[f] = v
		}
	}
	return c
}

// each calls fn with every content string; where fn returns a different
// string, it replaces the original. It reports whether any did.
func (c *content) each(fn func(string) string) bool {
	changed := false
	visit := func(s string) any {
		t := fn(s)
		if t != s {
			changed = true
		}
		return t
	}
	for _, f := range slices.Sorted(maps.Keys(c.fields)) {
		v := c.fields[f]
		switch {
		case c.api == policy.APIChatCompletions || (c.api == policy.APIMessages && f == "messages"):
			// [{role, content: string | [parts]}]
			for _, m := range asList(v) {
				if obj, ok := m.(map[string]any); ok {
					if cv, ok := obj["content"]; ok {
						obj["content"] = contentValue(cv, visit)
					}
				}
			}
		case c.api == policy.APIResponses && f == "input":
			// string | [string | {role, content: string | [parts]}]
			if s, ok := v.(string); ok {
				c.fields[f] = visit(s)
				break
			}
			for i, item := range asList(v) {
				switch it := item.(type) {
				case string:
					v.([]any)[i] = visit(it)
				case map[string]any:
					if cv, ok := it["content"]; ok {
						it["content"] = contentValue(cv, visit)
					}
				}
			}
		default:
			// completions prompt, embeddings input, responses
			// instructions, Anthropic system: a string, a list of
			// strings, or (system) a list of text blocks.
			c.fields[f] = contentValue(v, visit)
		}
	}
	return changed
}

// contentValue visits a content value: a string, or a list of strings
// and parts of a text type (an Anthropic tool_result's content too).
func contentValue(v any, visit func(string) any) any {
	switch x := v.(type) {
	case string:
		return visit(x)
	case []any:
		for i, p := range x {
			switch part := p.(type) {
			case string:
				x[i] = visit(part)
			case map[string]any:
				typ, _ := part["type"].(string)
				switch {
				case slices.Contains(textPartTypes, typ):
					if s, ok := part["text"].(string); ok {
						part["text"] = visit(s)
					}
				case typ == "tool_result":
					if c, ok := part["content"]; ok {
						part["content"] = contentValue(c, visit)
					}
				}
			}
		}
	}
	return v
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// write puts the content fields back into the request.
func (c *content) write() error {
	for f, v := range c.fields {
		var b bytes.Buffer
		e := json.NewEncoder(&b)
		e.SetEscapeHTML(false)
		if err := e.Encode(v); err != nil {
			return err
		}
		c.doc[f] = json.RawMessage(bytes.TrimRight(b.Bytes(), "\n"))
	}
	return nil
}

// Detections count a call's matches by detector: fixed fields, so an
// audit line holds names and numbers and nothing of the content.
type Detections struct {
	SSN        int `json:"ssn,omitempty"`
	CreditCard int `json:"credit_card,omitempty"`
	Email      int `json:"email,omitempty"`
	Phone      int `json:"phone,omitempty"`
}

func (d *Detections) count(detector string) *int {
	switch detector {
	case policy.DetectSSN:
		return &d.SSN
	case policy.DetectCreditCard:
		return &d.CreditCard
	case policy.DetectEmail:
		return &d.Email
	case policy.DetectPhone:
		return &d.Phone
	}
	return nil
}

// Count is the matches of the named detector.
func (d Detections) Count(detector string) int {
	if n := d.count(detector); n != nil {
		return *n
	}
	return 0
}

// String names the detectors that fired and their counts
// ("credit_card 1, email 2").
func (d Detections) String() string {
	var parts []string
	for _, name := range policy.PIIDetectors {
		if n := d.Count(name); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	return strings.Join(parts, ", ")
}

// privacyDecision is what the privacy rule made of a request.
type privacyDecision struct {
	local    bool // route to the local route
	found    Detections
	redacted int // matches replaced (cloud route only)
}

// applyPrivacy runs the rule's detectors over the request's message
// contents. A match of a route_local detector sends the call, unchanged,
// to the local route; otherwise each match of a redact detector is
// replaced before the cloud route. doc is rewritten in place when
// anything was redacted.
func applyPrivacy(doc map[string]json.RawMessage, api string, p *policy.Privacy) (privacyDecision, error) {
	var d privacyDecision
	if _, ok := contentFields[api]; !ok {
		return d, nil
	}
	c := newContent(doc, api)
	c.each(func(s string) string {
		for _, m := range Detect(s, p.Detectors) {
			if n := d.found.count(m.Detector); n != nil {
				*n++
			}
			if p.ActionOf(m.Detector) == policy.PrivacyRouteLocal {
				d.local = true
			}
		}
		return s
	})
	if d.local || d.found == (Detections{}) {
		return d, nil
	}
	var redact []string
	for _, det := range p.Detectors {
		if p.ActionOf(det) == policy.PrivacyRedact {
			redact = append(redact, det)
		}
	}
	if c.each(func(s string) string {
		m := Detect(s, redact)
		d.redacted += len(m)
		return Redact(s, m)
	}) {
		return d, c.write()
	}
	return d, nil
}

// privacyNote summarises the rule's work for the audit reason: detector
// names and counts, the route, what was redacted; never the content.
func (c *call) privacyNote() string {
	if c.ev.Detected == (Detections{}) {
		return ""
	}
	note := "privacy: " + c.ev.Detected.String()
	switch {
	case c.up.name == RouteLocal:
		note += " → local route"
	case c.ev.Redacted > 0:
		note += fmt.Sprintf(" → %d redacted", c.ev.Redacted)
	}
	return note
}
