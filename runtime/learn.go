package runtime

import (
	"fmt"
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
