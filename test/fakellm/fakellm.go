// Package fakellm is a fake OpenAI- and Anthropic-compatible model
// server for tests: it answers the routes the inference router serves
// with fixed token counts, streamed or not, and records every request it
// receives (method, path, headers, body). A request whose text holds one
// of the trigger words misbehaves on purpose: ECHO_KEY answers 401
// quoting the credential it got, TRUNCATE cuts its stream short, STALL
// goes quiet mid-stream. A streamed chat or completion naming
// fake_chunks (a field no real API has) streams that many content
// events of fake_chunk_bytes each (default 64): the relay benchmarks'
// load.
package fakellm

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// maxFakeChunks bounds a fake_chunks stream.
const maxFakeChunks = 1 << 20

// Fixed token counts the fake reports.
const (
	OpenAIPrompt     = 11
	OpenAICompletion = 7
	OpenAICached     = 3
	ResponsesIn      = 5
	ResponsesOut     = 9
	EmbeddingTokens  = 4
	AnthropicIn      = 20
	AnthropicOut     = 10
	AnthropicCacheW  = 2
	AnthropicCacheR  = 5
)

// Request is one request the server received.
type Request struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// Server is the fake. Its zero value is ready.
type Server struct {
	mu       sync.Mutex
	requests []Request
}

// Requests returns what it received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Reset forgets what it received.
func (s *Server) Reset() {
	s.mu.Lock()
	s.requests = nil
	s.mu.Unlock()
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	s.mu.Unlock()
	var req struct {
		Model         string `json:"model"`
		Stream        bool   `json:"stream"`
		StreamOptions *struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
		FakeChunks     int `json:"fake_chunks"`
		FakeChunkBytes int `json:"fake_chunk_bytes"`
	}
	_ = json.Unmarshal(body, &req)
	text := string(body)
	if strings.Contains(text, "ECHO_KEY") {
		key := r.Header.Get("X-Api-Key")
		if key == "" {
			key = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Debug-Key", key)
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintf(w, `{"error":{"message":"Incorrect API key provided: %s","type":"invalid_request_error"}}`, key)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1")
	switch {
	case path == "/models":
		writeJSON(w, map[string]any{"object": "list", "data": []map[string]any{{"id": "fake-model", "object": "model", "owned_by": "fakellm"}}})
	case path == "/chat/completions" || path == "/completions":
		if !req.Stream {
			writeJSON(w, map[string]any{"id": "chatcmpl-1", "object": "chat.completion", "model": req.Model,
				"choices": []any{map[string]any{"index": 0, "message": map[string]string{"role": "assistant", "content": "hello from fake openai"}, "finish_reason": "stop"}},
				"usage":   map[string]any{"prompt_tokens": OpenAIPrompt, "completion_tokens": OpenAICompletion, "total_tokens": OpenAIPrompt + OpenAICompletion, "prompt_tokens_details": map[string]any{"cached_tokens": OpenAICached}}})
			return
		}
		sse := startSSE(w)
		words := []string{"hello ", "from ", "fake ", "openai"}
		if n := min(req.FakeChunks, maxFakeChunks); n > 0 {
			size := req.FakeChunkBytes
			if size <= 0 || size > 64<<10 {
				size = 64
			}
			words = make([]string, n)
			for i := range words {
				words[i] = strings.Repeat("x", size)
			}
		}
		for _, word := range words {
			sse.data(map[string]any{"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": req.Model, "choices": []any{map[string]any{"index": 0, "delta": map[string]string{"content": word}}}})
			if s.misbehave(w, text, sse) {
				return
			}
		}
		if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
			sse.data(map[string]any{"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": req.Model, "choices": []any{},
				"usage": map[string]any{"prompt_tokens": OpenAIPrompt, "completion_tokens": OpenAICompletion, "total_tokens": OpenAIPrompt + OpenAICompletion, "prompt_tokens_details": map[string]any{"cached_tokens": OpenAICached}}})
		}
		sse.raw("data: [DONE]\n\n")
	case path == "/responses":
		usage := map[string]any{"input_tokens": ResponsesIn, "output_tokens": ResponsesOut, "input_tokens_details": map[string]any{"cached_tokens": 1}}
		resp := map[string]any{"id": "resp_1", "object": "response", "model": req.Model, "status": "completed", "output_text": "hello from fake responses", "usage": usage}
		if !req.Stream {
			writeJSON(w, resp)
			return
		}
		sse := startSSE(w)
		sse.event("response.created", map[string]any{"type": "response.created", "response": map[string]any{"id": "resp_1", "model": req.Model}})
		sse.event("response.output_text.delta", map[string]any{"type": "response.output_text.delta", "delta": "hello"})
		if s.misbehave(w, text, sse) {
			return
		}
		sse.event("response.completed", map[string]any{"type": "response.completed", "response": resp})
	case path == "/embeddings":
		writeJSON(w, map[string]any{"object": "list", "model": req.Model, "data": []any{map[string]any{"object": "embedding", "index": 0, "embedding": []float64{0.1, 0.2}}},
			"usage": map[string]any{"prompt_tokens": EmbeddingTokens, "total_tokens": EmbeddingTokens}})
	case path == "/messages":
		if !req.Stream {
			writeJSON(w, map[string]any{"id": "msg_1", "type": "message", "role": "assistant", "model": req.Model,
				"content": []any{map[string]string{"type": "text", "text": "hello from fake anthropic"}}, "stop_reason": "end_turn",
				"usage": map[string]any{"input_tokens": AnthropicIn, "output_tokens": AnthropicOut, "cache_creation_input_tokens": AnthropicCacheW, "cache_read_input_tokens": AnthropicCacheR}})
			return
		}
		sse := startSSE(w)
		sse.event("message_start", map[string]any{"type": "message_start", "message": map[string]any{"id": "msg_1", "type": "message", "model": req.Model,
			"usage": map[string]any{"input_tokens": AnthropicIn, "output_tokens": 1, "cache_creation_input_tokens": AnthropicCacheW, "cache_read_input_tokens": AnthropicCacheR}}})
		sse.event("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]string{"type": "text", "text": ""}})
		for _, word := range []string{"hello ", "from ", "fake ", "anthropic"} {
			sse.event("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]string{"type": "text_delta", "text": word}})
			if s.misbehave(w, text, sse) {
				return
			}
		}
		sse.event("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
		sse.event("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": "end_turn"}, "usage": map[string]any{"output_tokens": AnthropicOut}})
		sse.event("message_stop", map[string]any{"type": "message_stop"})
	default:
		http.NotFound(w, r)
	}
}

// misbehave cuts or stalls a stream when the request asked for it.
func (s *Server) misbehave(w http.ResponseWriter, text string, sse *sseWriter) bool {
	switch {
	case strings.Contains(text, "TRUNCATE"):
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
			}
		}
		return true
	case strings.Contains(text, "STALL"):
		time.Sleep(3 * time.Second)
		return true
	}
	return false
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

type sseWriter struct {
	w http.ResponseWriter
	f http.Flusher
}

func startSSE(w http.ResponseWriter) *sseWriter {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	f, _ := w.(http.Flusher)
	s := &sseWriter{w: w, f: f}
	s.flush()
	return s
}

func (s *sseWriter) flush() {
	if s.f != nil {
		s.f.Flush()
	}
}

func (s *sseWriter) raw(text string) {
	_, _ = io.WriteString(s.w, text)
	s.flush()
}

func (s *sseWriter) data(v any) {
	b, _ := json.Marshal(v)
	s.raw("data: " + string(b) + "\n\n")
}

func (s *sseWriter) event(name string, v any) {
	b, _ := json.Marshal(v)
	s.raw("event: " + name + "\ndata: " + string(b) + "\n\n")
}
