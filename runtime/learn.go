package runtime

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/openshell/openshell/policyhook"
)

// AnnotationLearn asks for learning mode ("true"): the container's timeline
// records file opens too and its egress gateway answers every name and
// allows every connection as audit, for openshell policy suggest. Honoured
// only where the configuration sets allow_learn.
const AnnotationLearn = "io.openshell.learn"

// Learning reports whether a container's annotations ask for learning mode,
// and refuses the request where the operator has not allowed it: the
// annotation's author chooses no more than the operator lets them, and
// learning opens the sandbox's network to every name (as audit). An absent
// annotation, or "false", is no request.
func Learning(cfg *Config, annotations map[string]string) (bool, error) {
	v, ok := annotations[AnnotationLearn]
	if !ok {
		return false, nil
	}
	on, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("annotation %s: %q is not true or false", AnnotationLearn, v)
	}
	if on && (cfg == nil || !cfg.AllowLearn) {
		return false, fmt.Errorf("annotation %s: learning mode is refused: the runtime configuration does not set allow_learn", AnnotationLearn)
	}
	return on, nil
}

// LearnCompile is the compile option of a sandbox in learning mode: its
// egress gateway even under a policy without egress rules; nil otherwise.
func LearnCompile(learn bool) []policyhook.Option {
	if !learn {
		return nil
	}
	return []policyhook.Option{policyhook.WithLearning()}
}

// LearnRecord is what a learning run leaves beside its audit log and
// timeline for openshell policy suggest: the policy it ran under (its
// bytes: the file may change or go), the image its paths came from and,
// once the sandbox has ended, its memory peak.
type LearnRecord struct {
	Sandbox    string `json:"sandbox"`
	PolicyFile string `json:"policy_file"`
	Policy     string `json:"policy"`
	Root       string `json:"root"`
	// MemoryPeakBytes is the most memory the sandbox's cgroup used
	// (MemoryPeak, sampled while it ran); 0 when not recorded.
	MemoryPeakBytes int64 `json:"memory_peak_bytes,omitempty"`
}

// LearnRecordFile is where a learning run's record is kept:
// <audit_dir>/learn/<sandbox>.json.
func LearnRecordFile(auditDir, sandbox string) string {
	if auditDir == "" {
		auditDir = DefaultAuditDir
	}
	return filepath.Join(auditDir, "learn", sandbox+".json")
}

// WriteLearnRecord keeps r for openshell policy suggest (root's, 0600:
// the policy may name credential files and environment values).
func WriteLearnRecord(auditDir string, r LearnRecord) error {
	f := LearnRecordFile(auditDir, r.Sandbox)
	if err := os.MkdirAll(filepath.Dir(f), 0o750); err != nil {
		return fmt.Errorf("learn record: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("learn record: %w", err)
	}
	if err := os.WriteFile(f, b, 0o600); err != nil {
		return fmt.Errorf("learn record: %w", err)
	}
	return nil
}

// ReadLearnRecord reads a learning run's record.
func ReadLearnRecord(auditDir, sandbox string) (*LearnRecord, error) {
	b, err := os.ReadFile(LearnRecordFile(auditDir, sandbox))
	if err != nil {
		return nil, fmt.Errorf("learn record: %w", err)
	}
	var r LearnRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("learn record %s: %w", LearnRecordFile(auditDir, sandbox), err)
	}
	return &r, nil
}
