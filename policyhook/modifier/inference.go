package modifier

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The variables a policy's inference.set_env puts in the sandbox: the
// OpenAI and Anthropic SDKs (and the tools built on them) read their
// base URL and key from these, so an agent reaches inference.local with
// no code change. The keys are placeholders: the SDKs refuse to start
// without one, and the egress gateway drops the Authorization and
// x-api-key headers they end up in (the provider's key is added on the
// host). They are shaped like the real ones (sk-, sk-ant-) because some
// tools check the prefix; nothing else about them is checked anywhere.
const (
	InferenceOpenAIBaseURL    = "http://inference.local/v1"
	InferenceAnthropicBaseURL = "http://inference.local"
	InferenceOpenAIKey        = "sk-openshell-placeholder-stripped-by-the-gateway"
	InferenceAnthropicKey     = "sk-ant-openshell-placeholder-stripped-by-the-gateway"
)

// InferenceEnv are the variables, in the order they are set.
var InferenceEnv = [][2]string{
	{"OPENAI_BASE_URL", InferenceOpenAIBaseURL},
	{"OPENAI_API_KEY", InferenceOpenAIKey},
	{"ANTHROPIC_BASE_URL", InferenceAnthropicBaseURL},
	{"ANTHROPIC_API_KEY", InferenceAnthropicKey},
}

type inferenceEnv struct{}

var _ SpecModifier = (*inferenceEnv)(nil)

// NewInferenceEnv points the sandbox's SDKs at inference.local: it sets
// InferenceEnv, replacing the engine's values (a real key passed with
// docker run -e never reaches the agent). It returns nil unless on.
// The compiler applies it before the policy's own env, which wins.
func NewInferenceEnv(on bool) SpecModifier {
	if !on {
		return nil
	}
	return &inferenceEnv{}
}

func (*inferenceEnv) Modify(s *specs.Spec) error {
	for _, kv := range InferenceEnv {
		SetEnv(s, kv[0], kv[1])
	}
	return nil
}
