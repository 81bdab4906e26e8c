package inference

import (
	"encoding/json"
	"testing"

	"github.com/openshell/openshell/policyhook/policy"
)

// FuzzApplyPrivacy: any JSON body, under any API, is read without
// failing; what a redact-everything rule sends on is JSON, and holds no
// match any more where the detectors read.
func FuzzApplyPrivacy(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"role":"user","content":"card 4111 1111 1111 1111"}]}`,
		`{"messages":[{"content":[{"type":"text","text":"a@b.io"},{"type":"tool_result","content":[{"type":"text","text":"123-45-6789"}]}]}],"system":"x"}`,
		`{"input":[{"content":[{"type":"input_text","text":"+1 415 555 2671"}]},"a@b.io"],"instructions":"hi"}`,
		`{"prompt":["a@b.io",1,null]}`,
	} {
		f.Add(s)
	}
	rule := &policy.Privacy{Detectors: policy.PIIDetectors, Action: policy.PrivacyRedact}
	f.Fuzz(func(t *testing.T, body string) {
		for _, api := range policy.InferenceAPIs {
			var doc map[string]json.RawMessage
			if json.Unmarshal([]byte(body), &doc) != nil || doc == nil {
				return
			}
			d, err := applyPrivacy(doc, api, rule)
			if err != nil {
				t.Fatalf("%s: %v", api, err)
			}
			out, err := json.Marshal(doc)
			if err != nil {
				t.Fatalf("%s: the body is no longer JSON: %v", api, err)
			}
			var again map[string]json.RawMessage
			if err := json.Unmarshal(out, &again); err != nil {
				t.Fatal(err)
			}
			if d2, _ := applyPrivacy(again, api, rule); d2.found != (Detections{}) && d.redacted > 0 {
				t.Fatalf("%s: after redacting %d, still found %+v in %s", api, d.redacted, d2.found, out)
			}
		}
	})
}
