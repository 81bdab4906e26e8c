package inference

import "github.com/openshell/openshell/policyhook/policy"

// usageDoc is what the router reads of an answer, or of one streamed
// event, in any of the shapes it serves: an OpenAI chat, completion or
// embedding (usage at the top, with prompt_tokens), an OpenAI responses
// object or event (response.usage, with input_tokens), an Anthropic
// message (usage) or stream event (message.usage at message_start, usage
// at message_delta).
type usageDoc struct {
	Type     string     `json:"type"`
	Model    string     `json:"model"`
	Usage    *rawUsage  `json:"usage"`
	Choices  *[]any     `json:"choices"`
	Message  *nestedDoc `json:"message"`
	Response *nestedDoc `json:"response"`
}

type nestedDoc struct {
	Model string    `json:"model"`
	Usage *rawUsage `json:"usage"`
}

type rawUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	InputTokens      int64 `json:"input_tokens"`
	OutputTokens     int64 `json:"output_tokens"`
	CacheCreation    int64 `json:"cache_creation_input_tokens"`
	CacheRead        int64 `json:"cache_read_input_tokens"`
	PromptDetails    *struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	InputDetails *struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
}

// tally is one call's tokens. Reports are totals so far (a stream's
// message_delta repeats the running output count), so each field keeps
// the largest value seen.
type tally struct {
	input      int64 // input tokens not read from or written to a cache (Anthropic), or all (OpenAI)
	out        int64
	cacheRead  int64
	cacheWrite int64
	anthropic  bool // input excludes the cache tokens
	model      string
}

// in is every input token, cached or not.
func (t *tally) in() int64 {
	if t.anthropic {
		return t.input + t.cacheRead + t.cacheWrite
	}
	return t.input
}

// see takes the usage and model one document reports.
func (t *tally) see(d *usageDoc, api string) {
	u, model := d.Usage, d.Model
	for _, n := range []*nestedDoc{d.Message, d.Response} {
		if n != nil {
			if n.Usage != nil {
				u = n.Usage
			}
			if n.Model != "" {
				model = n.Model
			}
		}
	}
	if model != "" {
		t.model = model
	}
	if u == nil {
		return
	}
	t.anthropic = api == policy.APIMessages
	t.input = max(t.input, u.PromptTokens, u.InputTokens)
	t.out = max(t.out, u.CompletionTokens, u.OutputTokens)
	t.cacheRead = max(t.cacheRead, u.CacheRead)
	t.cacheWrite = max(t.cacheWrite, u.CacheCreation)
	if u.PromptDetails != nil {
		t.cacheRead = max(t.cacheRead, u.PromptDetails.CachedTokens)
	}
	if u.InputDetails != nil {
		t.cacheRead = max(t.cacheRead, u.InputDetails.CachedTokens)
	}
}
