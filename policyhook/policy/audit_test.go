package policy

import (
	"strings"
	"testing"
)

func TestSeedAuditFileOpens(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: \"1.0\"\nsandbox:\n  audit: {file_opens: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Audit.FileOpens {
		t.Error("file_opens not read")
	}
	p, err = Parse("p.yaml", []byte("version: \"1.0\"\nsandbox: {}\n"))
	if err != nil || p.Audit.FileOpens {
		t.Errorf("default: %v %v", p.Audit, err)
	}
}

func TestSeedAuditWrongField(t *testing.T) {
	for in, want := range map[string]string{
		"audit: {file_opens: yes please}": "sandbox.audit.file_opens",
		"audit: {opens: true}":            "sandbox.audit.opens: unknown field",
	} {
		_, err := Parse("p.yaml", []byte("version: \"1.0\"\nsandbox:\n  "+in+"\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", in, err, want)
		}
	}
}
