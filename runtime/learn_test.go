package runtime

import (
	"strings"
	"testing"
)

func TestLearning(t *testing.T) {
	allow := &Config{AllowLearn: true}
	for _, tc := range []struct {
		name string
		cfg  *Config
		ann  map[string]string
		want bool
		err  string
	}{
		{"no annotation", &Config{}, nil, false, ""},
		{"false", &Config{}, map[string]string{AnnotationLearn: "false"}, false, ""},
		{"refused", &Config{}, map[string]string{AnnotationLearn: "true"}, false, "does not set allow_learn"},
		{"nil config", nil, map[string]string{AnnotationLearn: "true"}, false, "does not set allow_learn"},
		{"allowed", allow, map[string]string{AnnotationLearn: "true"}, true, ""},
		{"not a bool", allow, map[string]string{AnnotationLearn: "yes please"}, false, "is not true or false"},
	} {
		got, err := Learning(tc.cfg, tc.ann)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.err)
		case got != tc.want:
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
